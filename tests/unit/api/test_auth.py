"""Keys, roles and sessions on every route, through the app and the canned responder."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.routing import Mount, Route

from modelyard.accounts.identity import LOCAL, Role
from modelyard.accounts.service import Accounts
from modelyard.api.auth import PUBLIC, RULES, principal_of
from modelyard.errors import AuthenticationError
from tests.unit.api.conftest import Harness, canned_spec

CHAT = {"model": "canned", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
_BODY_METHODS = {"POST", "PATCH", "DELETE", "PUT"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def make_key(h: Harness, role: Role = Role.USER, **fields: Any) -> str:
    accounts: Accounts = h.app.state.accounts
    key, _ = await accounts.create_key(name=fields.pop("name", str(role)), role=role, **fields)
    return key


def code(exchange: Any) -> str | None:
    """The error's code; on Ollama's and Anthropic's routes, whose errors have none, the one
    their status and words stand for."""
    try:
        error = exchange.json().get("error")
    except ValueError:
        return None
    if isinstance(error, dict) and "code" in error:
        return str(error["code"]) if error["code"] is not None else None
    message = error if isinstance(error, str) else (error or {}).get("message", "")
    if exchange.status == 401:
        return "invalid_api_key"
    if exchange.status == 403 and "may not use" in message:
        return "insufficient_role"
    return None


def every_route(routes: list[Any]) -> list[APIRoute | Route]:
    """The app's routes, those of included routers too (none has a prefix here)."""
    found: list[APIRoute | Route] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            found += every_route(inner.routes)
        elif isinstance(route, Mount):  # files: every GET below it
            found.append(Route(route.path + "/{path:path}", endpoint=lambda _: None))
        else:
            assert isinstance(route, APIRoute | Route), route
            found.append(route)
    return found


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "canned", path)


async def test_auth_every_route_has_a_rule_and_each_role_gets_what_it_says(
    make_harness: Callable,
) -> None:
    """The matrix is made from the app's own routes: a route without a rule fails here."""
    async with make_harness(auth_mode="keys") as h:
        keys = {role: await make_key(h, role) for role in Role}
        checked = 0
        for route in every_route(h.app.routes):
            for method in sorted((route.methods or set()) - {"HEAD"}):
                access = RULES.get((method, route.path))
                assert access is not None, f"{method} {route.path}: no rule in api.auth.RULES"
                path = concrete(route.path)
                body = {} if method in _BODY_METHODS else None
                anonymous = await h.call(path, body, method=method)
                if access is PUBLIC:
                    assert code(anonymous) not in ("invalid_api_key", "insufficient_role"), path
                else:
                    assert anonymous.status == 401, f"{method} {path}"
                    assert code(anonymous) == "invalid_api_key"
                for role, key in keys.items():
                    answer = await h.call(path, body, method=method, headers=bearer(key))
                    if access is PUBLIC or access.allows(role):
                        assert answer.status not in (401, 403) or code(answer) not in (
                            "invalid_api_key",
                            "insufficient_role",
                        ), f"{role} {method} {path}"
                    else:
                        assert answer.status == 403, f"{role} {method} {path}: {answer.body!r}"
                        assert code(answer) == "insufficient_role"
                checked += 1
        assert checked >= 35


async def test_auth_off_on_loopback_by_default(make_harness: Callable) -> None:
    async with make_harness() as h:  # auth_mode "off" as loopback resolves
        assert (await h.call("/v1/chat/completions", CHAT)).status == 200
        assert (await h.call("/api/ps", method="GET")).status == 200


async def test_auth_takes_bearer_and_x_api_key_and_filters_models(
    make_harness: Callable, tmp_path: Any
) -> None:
    from tests.unit.api.conftest import canned_spec

    other = canned_spec(tmp_path, name="other", aliases=("secret-alias",))
    async with make_harness(canned_spec(tmp_path), other, auth_mode="keys") as h:
        key = await make_key(h, models=["canned"])
        assert (await h.call("/v1/chat/completions", CHAT, headers=bearer(key))).status == 200
        anthropic_style = await h.call("/v1/chat/completions", CHAT, headers={"x-api-key": key})
        assert anthropic_style.status == 200
        listed = await h.call("/v1/models", method="GET", headers=bearer(key))
        assert [m["id"] for m in listed.json()["data"]] == ["canned"]
        hidden = await h.call("/v1/models/other", method="GET", headers=bearer(key))
        assert hidden.status == 404
        refused = await h.call(
            "/v1/chat/completions", {**CHAT, "model": "secret-alias"}, headers=bearer(key)
        )
        assert refused.status == 403
        assert code(refused) == "model_not_allowed"
        globbed = await make_key(h, name="glob", models=["secret-*"])
        by_alias = await h.call(
            "/v1/chat/completions", {**CHAT, "model": "other"}, headers=bearer(globbed)
        )
        assert by_alias.status == 200  # an alias matches the glob


@pytest.mark.parametrize(
    ("headers", "query", "status"),
    [
        ({}, "", 401),
        ({"Authorization": "Bearer my-" + "A" * 40}, "", 401),
        ({"Authorization": "Bearer "}, "", 401),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "", 401),
        ({"Authorization": "Bearer " + "x" * 10_000}, "", 401),
        ({"Authorization": "Bearer ' OR 1=1 --"}, "", 401),
        ({"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.forged"}, "", 401),
        ({}, "api_key=my-whatever", 400),
        ({}, "key=my-whatever", 400),
    ],
)
async def test_auth_refuses_bad_credentials_clearly(
    make_harness: Callable, headers: dict[str, str], query: str, status: int
) -> None:
    async with make_harness(auth_mode="keys") as h:
        path = "/v1/models" + (f"?{query}" if query else "")
        answer = await h.call(path, method="GET", headers=headers)
        assert answer.status == status
        error = answer.json()["error"]
        assert error["message"]
        assert error["code"] == ("invalid_api_key" if status == 401 else None)


async def test_auth_key_in_the_query_is_refused_even_when_valid(make_harness: Callable) -> None:
    async with make_harness(auth_mode="keys") as h:
        key = await make_key(h)
        answer = await h.call(f"/v1/models?api_key={key}", method="GET", headers=bearer(key))
        assert answer.status == 400
        assert "not accepted in the URL" in answer.json()["error"]["message"]


async def test_auth_revoked_or_expired_key_stops_within_a_second(make_harness: Callable) -> None:
    async with make_harness(auth_mode="keys") as h:
        admin = await make_key(h, Role.ADMIN, name="root")
        key = await make_key(h, name="victim")
        assert (await h.call("/v1/models", method="GET", headers=bearer(key))).status == 200
        revoked = await h.call("/api/keys/victim", method="DELETE", headers=bearer(admin))
        assert revoked.status == 200
        assert revoked.json()["enabled"] is False
        after = await h.call("/v1/models", method="GET", headers=bearer(key))
        assert after.status == 401
        assert "revoked" in after.json()["error"]["message"]
        # Changed behind this gateway's back (another gateway, same database): within 1 s.
        accounts: Accounts = h.app.state.accounts
        other = await make_key(h, name="other")
        assert (await h.call("/v1/models", method="GET", headers=bearer(other))).status == 200
        record = await accounts.store.find_key("other")
        await accounts.store.update_key(record["id"], {"expires_at": 1.0})
        await asyncio.sleep(1.05)
        expired = await h.call("/api/me", method="GET", headers=bearer(other))
        assert expired.status == 401
        assert "expired" in expired.json()["error"]["message"]


async def test_auth_the_last_admin_credential_cannot_be_revoked(make_harness: Callable) -> None:
    """Revoking, demoting or removing the last way in as an admin is refused (409): nobody
    could manage the server again. With a second admin, the first may go."""
    async with make_harness(auth_mode="keys") as h:
        admin = await make_key(h, Role.ADMIN, name="root")
        listed = (await h.call("/api/keys", method="GET", headers=bearer(admin))).json()["keys"]
        for other in listed:  # the admin key the server made at start
            if other["name"] != "root":
                path = f"/api/keys/{other['id']}"
                assert (await h.call(path, method="DELETE", headers=bearer(admin))).status == 200
        refused = await h.call("/api/keys/root", method="DELETE", headers=bearer(admin))
        assert refused.status == 409
        assert "last admin credential" in refused.json()["error"]["message"]
        assert (await h.call("/api/me", method="GET", headers=bearer(admin))).status == 200
        made = await h.call(
            "/api/users",
            {"name": "ada", "password": "ada-password", "role": "admin"},
            headers=bearer(admin),
        )
        assert made.status == 201
        demoted = await h.call(
            "/api/users/ada", {"role": "user"}, method="PATCH", headers=bearer(admin)
        )
        assert demoted.status == 200  # the root key still is an admin
        revoked = await h.call("/api/keys/root", method="DELETE", headers=bearer(admin))
        assert revoked.status == 409  # ada is a user now: root is the last again
        await h.call("/api/users/ada", {"role": "admin"}, method="PATCH", headers=bearer(admin))
        revoked = await h.call("/api/keys/root", method="DELETE", headers=bearer(admin))
        assert revoked.status == 200
        login = await h.call("/api/login", {"username": "ada", "password": "ada-password"})
        session = login.json()["token"]
        gone = await h.call("/api/users/ada", method="DELETE", headers=bearer(session))
        assert gone.status == 409


async def test_auth_login_session_and_signup(make_harness: Callable) -> None:
    async with make_harness(auth_mode="keys", allow_signup=True, signup_balance=500) as h:
        off = await h.call("/api/login", {"username": "nobody", "password": "whatever1"})
        assert off.status == 401
        made = await h.call("/api/signup", {"username": "dora", "password": "correct horse"})
        assert made.status == 201
        assert made.json()["balance"] == 500
        assert made.json()["role"] == "user"
        wrong = await h.call("/api/login", {"username": "dora", "password": "wrong horse!"})
        assert wrong.status == 401
        login = await h.call("/api/login", {"username": "dora", "password": "correct horse"})
        assert login.status == 200
        token = login.json()["token"]
        me = await h.call("/api/me", method="GET", headers=bearer(token))
        assert me.json()["user"]["name"] == "dora"
        assert me.json()["kind"] == "session"
        assert (await h.call("/v1/chat/completions", CHAT, headers=bearer(token))).status == 200
        # a user makes a key of its own; it has the user's role and balance
        key = await h.call("/api/keys", {"name": "laptop"}, headers=bearer(token))
        assert key.status == 201
        assert key.json()["user"] == "dora"
        assert key.json()["role"] == "user"
        limits = await h.call("/api/keys", {"name": "x", "rpm": 10**6}, headers=bearer(token))
        assert limits.status == 403
        admin = await make_key(h, Role.ADMIN, name="root")
        gone = await h.call("/api/users/dora", method="DELETE", headers=bearer(admin))
        assert gone.status == 200
        await asyncio.sleep(0)  # this gateway forgot it at once
        assert (await h.call("/api/me", method="GET", headers=bearer(token))).status == 401
        dropped = await h.call("/api/me", method="GET", headers=bearer(key.json()["key"]))
        assert dropped.status == 401


async def test_auth_signup_is_off_unless_allowed(make_harness: Callable) -> None:
    async with make_harness(auth_mode="keys") as h:
        answer = await h.call("/api/signup", {"username": "eve", "password": "long enough"})
        assert answer.status == 403


async def test_auth_bad_input_is_4xx_and_never_logged(
    make_harness: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with make_harness(auth_mode="keys") as h:
        admin = await make_key(h, Role.ADMIN, name="root")
        huge = "p" * 1_000_000
        big = await h.call("/api/users", {"name": "frank", "password": huge}, headers=bearer(admin))
        assert big.status == 400
        login = await h.call("/api/login", {"username": "frank", "password": huge})
        assert login.status == 400
        sql = await h.call(
            "/api/users",
            {"name": "x'; DROP TABLE users;--", "password": "abcdefgh1"},
            headers=bearer(admin),
        )
        assert sql.status == 400  # not a name
        assert sql.json()["error"]["param"] == "name"
        secret = "s3cret-passw0rd"
        ok = await h.call(
            "/api/users", {"name": "frank", "password": secret, "balance": 5}, headers=bearer(admin)
        )
        assert ok.status == 201
        assert secret not in ok.body.decode()
        assert "argon2" not in ok.body.decode()
        made = await h.call("/api/keys", {"name": "f", "user": "frank"}, headers=bearer(admin))
        key = made.json()["key"]
        assert (
            await h.call("/api/login", {"username": "frank", "password": "nope-nope"})
        ).status == 401
        listed = await h.call("/api/keys", method="GET", headers=bearer(admin))
        assert key not in listed.body.decode()
        assert "hash" not in listed.json()["keys"][0]
        await h.call("/v1/chat/completions", CHAT, headers=bearer(key))
        await h.call("/v1/models", method="GET", headers=bearer(key[:-1] + "Z"))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for needle in (admin, key, secret, huge[:100], key[:-1] + "Z"):
        assert needle not in logged


@pytest.mark.parametrize(
    ("host", "mode", "required"),
    [
        ("127.0.0.1", "auto", False),
        ("::1", "auto", False),
        ("localhost", "auto", False),
        ("0.0.0.0", "auto", True),
        ("192.168.1.5", "auto", True),
        ("127.0.0.1", "keys", True),
        ("0.0.0.0", "off", False),
    ],
)
def test_auth_auto_requires_keys_off_loopback_only(host: str, mode: str, required: bool) -> None:
    from pathlib import Path

    from modelyard.config import Config, keys_required

    config = Config(
        host=host,
        port=8000,
        home=Path("/h"),
        models_dir=Path("/m"),
        ram="1GiB",
        min_residency=0.0,
        stop_grace=1.0,
        log_level="info",
        auth_mode=mode,
    )
    assert keys_required(config) is required


async def test_auth_off_on_an_open_address_warns_who_can_reach_it(
    caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    from modelyard.api.app import _accounts
    from modelyard.config import Config

    config = Config(
        host="0.0.0.0",
        port=8000,
        home=tmp_path,
        models_dir=tmp_path,
        ram="1GiB",
        min_residency=0.0,
        stop_grace=1.0,
        log_level="info",
        auth_mode="off",
        usage_ledger=False,
    )
    with caplog.at_level(logging.WARNING):
        assert await _accounts(config) is None
    assert "anyone who can reach this address can use every model and the admin routes" in (
        caplog.text
    )


async def test_auth_null_fields_change_nothing(make_harness: Callable) -> None:
    """``null`` is "not given" (``clear`` removes a limit): never a 500 on a NOT NULL column."""
    async with make_harness(auth_mode="keys") as h:
        admin = await make_key(h, Role.ADMIN, name="root")
        await h.call("/api/users", {"name": "ivy", "rpm": 5}, headers=bearer(admin))
        nulls = {"enabled": None, "role": None, "password": None, "rpm": None}
        changed = await h.call("/api/users/ivy", nulls, method="PATCH", headers=bearer(admin))
        assert changed.status == 200
        assert changed.json()["rpm"] == 5
        cleared = await h.call("/api/users/ivy", {"clear": ["rpm"]}, method="PATCH",
                               headers=bearer(admin))  # fmt: skip
        assert cleared.json()["rpm"] is None
        key = await h.call("/api/keys/root", {"name": None, "enabled": None}, method="PATCH",
                           headers=bearer(admin))  # fmt: skip
        assert key.status == 200
        assert key.json()["name"] == "root"


def test_auth_a_request_nobody_admitted_is_refused_not_served_as_admin() -> None:
    """A route that asks whom it serves, reached without the middleware's admission (a
    public route, a route table mistake), gets 401: never the local admin."""
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/", "headers": []}
    with pytest.raises(AuthenticationError):
        principal_of(Request(scope))
    assert principal_of(Request({**scope, "state": {"principal": LOCAL}})) is LOCAL


async def test_auth_a_users_load_error_names_no_server_directories(
    make_harness: Callable, tmp_path: Path
) -> None:
    """A model whose file is corrupt: the admin reads where it is, a user key only its name;
    both see the model failed, with the reason."""
    spec = canned_spec(tmp_path, memory=None)  # its estimate reads the (4-byte) header
    async with make_harness(spec, auth_mode="keys") as h:
        admin = await make_key(h, Role.ADMIN, name="root")
        user = await make_key(h, name="u")
        chat = {"model": "canned", "messages": [{"role": "user", "content": "hi"}]}
        theirs = await h.call("/v1/chat/completions", chat, headers=bearer(user))
        ours = await h.call("/api/load", {"model": "canned"}, headers=bearer(admin))
        assert theirs.status == ours.status == 503
        assert str(tmp_path) in ours.json()["error"]["message"]
        message = theirs.json()["error"]["message"]
        assert "canned.gguf" in message
        assert str(tmp_path) not in message
        listed = await h.call("/api/models", method="GET", headers=bearer(admin))
        (row,) = listed.json()["models"]
        assert row["state"] == "failed"
        assert "canned.gguf" in row["last_error"]
