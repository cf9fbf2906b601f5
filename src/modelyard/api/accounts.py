"""Accounts over HTTP: login and signup, the caller's own account, keys, users and usage.

Admins manage every key and user; any other caller sees and revokes the keys of its own
user and sees its own usage. Keys are made by admins, and by users logged in with their
password (a session): such a key has its user's role, and its user's models, limits and
balance apply to it, so it is never stronger than its maker; it dies with its user. A key
cannot make keys.
"""

from __future__ import annotations

import csv
import io
import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from modelyard.accounts.identity import Principal, Role, display
from modelyard.accounts.service import Accounts
from modelyard.accounts.store import GROUPS, USAGE_COLUMNS, UsageQuery
from modelyard.api.auth import principal_of
from modelyard.api.request import documented, iso_time, read_json, time_param
from modelyard.errors import (
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
)
from modelyard.protocol.accounts import (
    KeyCreateRequest,
    KeyUpdateRequest,
    LoginRequest,
    SignupRequest,
    UserCreateRequest,
    UserUpdateRequest,
)

router = APIRouter()


def accounts_of(request: Request) -> Accounts:
    accounts: Accounts | None = request.app.state.accounts
    if accounts is None:
        raise NotFoundError(
            "Accounts are off on this server (usage_ledger = false and no keys required)"
        )
    return accounts


def key_view(record: dict[str, Any]) -> dict[str, Any]:
    """A key as the API shows it: never its hash."""
    return {
        "id": record["id"],
        "prefix": display(record["id"]),
        "name": record["name"],
        "user": record["user_name"],
        "role": record["role"],
        "models": record["models"],
        "rpm": record["rpm"],
        "tpm": record["tpm"],
        "max_concurrent": record["max_concurrent"],
        "priority": record["priority"],
        "balance": record["balance"],
        "expires_at": iso_time(record["expires_at"]),
        "enabled": record["enabled"],
        "created_at": iso_time(record["created_at"]),
    }


def user_view(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": record["name"],
        "role": record["role"],
        "models": record["models"],
        "rpm": record["rpm"],
        "tpm": record["tpm"],
        "max_concurrent": record["max_concurrent"],
        "balance": record["balance"],
        "enabled": record["enabled"],
        "has_password": record["password_hash"] is not None,
        "created_at": iso_time(record["created_at"]),
    }


# ---- sessions -------------------------------------------------------------------------------


@router.post("/api/login", openapi_extra=documented(LoginRequest))
async def login(request: Request) -> dict[str, Any]:
    """A short-lived session token for a user's password (send it as ``Bearer``)."""
    _, parsed = await read_json(request, LoginRequest)
    token, expires, role = await accounts_of(request).login(
        parsed.username, parsed.password, _address(request)
    )
    return {"token": token, "expires_at": iso_time(expires), "user": parsed.username, "role": role}


@router.post("/api/signup", status_code=201, openapi_extra=documented(SignupRequest))
async def signup(request: Request) -> dict[str, Any]:
    accounts = accounts_of(request)
    if not accounts.allow_signup:
        raise ForbiddenError("Sign-up is off on this server: ask an admin for an account")
    _, parsed = await read_json(request, SignupRequest)
    await accounts.signup(parsed.username, parsed.password, _address(request))
    return user_view(await accounts.store.user(parsed.username))


def _address(request: Request) -> str:
    """The client's address, for the brakes on logins and sign-ups."""
    return request.client.host if request.client is not None else ""


@router.get("/api/me")
async def me(request: Request) -> dict[str, Any]:
    """Who the caller is, and its key's and user's limits and balances."""
    principal = principal_of(request)
    accounts = request.app.state.accounts
    out: dict[str, Any] = {
        "kind": principal.kind,
        "role": principal.role,
        "key": None,
        "user": None,
    }
    if accounts is not None and principal.key_id is not None:
        record = await accounts.store.key(principal.key_id)
        out["key"] = key_view(record) if record else None
    if accounts is not None and principal.username is not None:
        out["user"] = user_view(await accounts.store.user(principal.username))
    return out


# ---- keys -----------------------------------------------------------------------------------


@router.get("/api/keys")
async def list_keys(request: Request) -> dict[str, Any]:
    principal = principal_of(request)
    accounts = accounts_of(request)
    await accounts.ledger.flush()  # balances with the credit this gateway holds
    if principal.role is Role.ADMIN:
        records = await accounts.store.keys()
    elif principal.user_id is not None:
        records = await accounts.store.keys(user_id=principal.user_id)
    else:
        record = await accounts.store.key(principal.key_id or "")
        records = [record] if record else []
    return {"keys": [key_view(r) for r in records]}


@router.post("/api/keys", status_code=201, openapi_extra=documented(KeyCreateRequest))
async def create_key(request: Request) -> dict[str, Any]:
    """A new key: the answer is the only time it is shown."""
    principal = principal_of(request)
    accounts = accounts_of(request)
    _, parsed = await read_json(request, KeyCreateRequest)
    fields = parsed.model_dump(exclude_none=True, exclude={"name", "role", "user", "expires_in"})
    user: str | None
    role: Role
    if principal.role is not Role.ADMIN:
        if principal.kind != "session":
            # A key made with a key would not carry that key's own models, limits, balance
            # and expiry: only the user itself, logged in, makes keys bound by its own.
            raise ForbiddenError(
                "Only admins, and users logged in with their password, make keys; a key "
                "cannot make another. Log in (modelyard login, or POST /api/login) and make "
                "the key with the session"
            )
        if parsed.user not in (None, principal.username) or fields.keys() - {"priority"}:
            raise ForbiddenError(
                "Only admins can make keys for others or set a key's limits; a key you make "
                "has your own role, models and limits"
            )
        user, role = principal.username, principal.role
        fields = {}
    else:
        user = parsed.user
        if parsed.role:
            role = Role(parsed.role)
        else:
            role = Role((await accounts.store.user(user))["role"]) if user else Role.USER
    if parsed.expires_in is not None:
        fields["expires_at"] = time.time() + parsed.expires_in
    key, record = await accounts.create_key(name=parsed.name, role=role, user=user, **fields)
    return {"key": key, **key_view(record)}


@router.patch("/api/keys/{key}", openapi_extra=documented(KeyUpdateRequest))
async def update_key(request: Request, key: str) -> dict[str, Any]:
    accounts = accounts_of(request)
    _, parsed = await read_json(request, KeyUpdateRequest)
    values = parsed.model_dump(exclude_none=True, exclude={"add_balance", "expires_in", "clear"})
    if parsed.expires_in is not None:
        values["expires_at"] = time.time() + parsed.expires_in
    for name in parsed.clear:
        values["expires_at" if name == "expires" else name] = None
    record = await accounts.store.find_key(key)
    if parsed.add_balance is not None:
        await accounts.store.add_balance("key", record["id"], parsed.add_balance)
    return key_view(await accounts.update_key(record["id"], values))


@router.delete("/api/keys/{key}")
async def revoke_key(request: Request, key: str) -> dict[str, Any]:
    """Revokes a key: it stops working on every gateway within a second."""
    principal = principal_of(request)
    accounts = accounts_of(request)
    record = await accounts.store.find_key(key)
    if principal.role is not Role.ADMIN and not _owns(principal, record):
        raise NotFoundError(f"No key {key!r}")
    return key_view(await accounts.update_key(record["id"], {"enabled": False}))


def _owns(principal: Principal, record: dict[str, Any]) -> bool:
    if principal.user_id is not None:
        return bool(record["user_id"] == principal.user_id)
    return bool(record["id"] == principal.key_id)


# ---- users ----------------------------------------------------------------------------------


@router.get("/api/users")
async def list_users(request: Request) -> dict[str, Any]:
    accounts = accounts_of(request)
    await accounts.ledger.flush()
    return {"users": [user_view(u) for u in await accounts.store.users()]}


@router.post("/api/users", status_code=201, openapi_extra=documented(UserCreateRequest))
async def add_user(request: Request) -> dict[str, Any]:
    accounts = accounts_of(request)
    _, parsed = await read_json(request, UserCreateRequest)
    values = parsed.model_dump(exclude_none=True, exclude={"name", "password"})
    values["role"] = parsed.role
    await accounts.add_user(parsed.name, parsed.password, values)
    return user_view(await accounts.store.user(parsed.name))


@router.patch("/api/users/{name}", openapi_extra=documented(UserUpdateRequest))
async def update_user(request: Request, name: str) -> dict[str, Any]:
    accounts = accounts_of(request)
    _, parsed = await read_json(request, UserUpdateRequest)
    values = parsed.model_dump(exclude_none=True, exclude={"add_balance", "clear"})
    for field in parsed.clear:
        values[field] = None
    user = await accounts.store.user(name)
    if parsed.add_balance is not None:
        await accounts.store.add_balance("user", user["id"], parsed.add_balance)
    await accounts.update_user(name, values)
    return user_view(await accounts.store.user(name))


@router.delete("/api/users/{name}")
async def remove_user(request: Request, name: str) -> dict[str, Any]:
    """Removes a user and its keys; the ledger keeps their rows."""
    await accounts_of(request).remove_user(name)
    return {"removed": name}


# ---- usage ----------------------------------------------------------------------------------


@router.get("/api/usage", response_model=None)
async def usage(
    request: Request,
    key: str | None = None,
    user: str | None = None,
    model: str | None = None,
    since: str | None = None,
    until: str | None = None,
    by: str | None = None,
    format: str = "json",
    limit: int = 1000,
) -> dict[str, Any] | Response:
    """Ledger rows (newest first), or totals ``by`` key, user, model or day; ``format=csv``
    for a spreadsheet. Admins see everyone's; others their own."""
    principal = principal_of(request)
    accounts = accounts_of(request)
    if by is not None and by not in GROUPS:
        raise InvalidRequestError(f"by: one of {', '.join(GROUPS)}", param="by")
    if format not in ("json", "csv"):
        raise InvalidRequestError("format: json or csv", param="format")
    if not 1 <= limit <= 1_000_000:
        raise InvalidRequestError("limit: 1 to 1000000", param="limit")
    if principal.role is not Role.ADMIN:  # its own, whatever it asked for
        user = principal.username
        key = None if user is not None else principal.key_id
    query = UsageQuery(
        key, user, model, time_param(since, "since"), time_param(until, "until"), limit
    )
    await accounts.ledger.flush()  # what this gateway served so far is in
    if by is None:
        rows = await accounts.store.usage(query)
        columns: tuple[str, ...] = USAGE_COLUMNS
    else:
        rows = await accounts.store.usage_by(query, by)
        columns = (by, "requests", "prompt_tokens", "completion_tokens", "cost", "errors")
    if format == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        return Response(buffer.getvalue(), media_type="text/csv; charset=utf-8")
    return {"by": by, "rows": [{c: r.get(c) for c in columns} for r in rows]}
