"""What the API asks of accounts: who a token belongs to, whether a request may run (rate
limits, token balance), what it cost, and the management of keys and users.

Keys and sessions are looked up in the database at most once a second each (``CACHE_TTL``):
the cache keeps the request path free of queries, and a key revoked on another gateway
stops working within that second (at once on this one). Balances are the exception: they
are reserved and given back in the database itself, never cached.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from modelyard.accounts import identity
from modelyard.accounts.balance import Wallet, Wallets
from modelyard.accounts.brakes import LoginBrake, SignupBrake
from modelyard.accounts.credential import (
    MAX_PASSWORD,
    MIN_PASSWORD,
    Sessions,
    hash_password,
    looks_like_session,
    prepare,
    verify_password,
)
from modelyard.accounts.identity import LOCAL, Limits, Principal, Role
from modelyard.accounts.ledger import LedgerWriter
from modelyard.accounts.limits import Admission, RateLimiter, Shared, limited
from modelyard.accounts.store import Store, UsageRow
from modelyard.errors import (
    AuthenticationError,
    ConflictError,
    InsufficientQuotaError,
    InvalidRequestError,
    NotFoundError,
)

log = logging.getLogger(__name__)

CACHE_TTL = 1.0
"""Seconds a key or session's user is trusted from memory before it is read again."""
_SECRET = "session"


@dataclass
class Charge:
    """An admitted request: its place in the rate limits and what it reserved."""

    principal: Principal
    admission: Admission
    reserved: int = 0
    wallets: tuple[Wallet, ...] = ()
    """The balances ``reserved`` was taken from."""
    cost: int | None = None
    """What it was charged, once settled."""


@dataclass(frozen=True)
class Bill:
    """How the serving layer charges one request: ``reserve`` before it is served (its rate
    limits and its worst case on the balances), ``settle`` once it is over."""

    accounts: Accounts
    principal: Principal
    estimate: int
    worst: int
    price: float

    async def reserve(self) -> Charge:
        return await self.accounts.admit(self.principal, self.estimate, self.worst, self.price)

    def settle(self, charge: Charge, tokens: int, request_id: str) -> int:
        return self.accounts.settle(charge, tokens, self.price, request_id)


@dataclass(frozen=True)
class Usage:
    """What a finished request reports to the ledger."""

    time: float
    request_id: str
    model: str | None
    route: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    price: float
    queue_ms: float | None
    load_ms: float | None
    ttft_ms: float | None
    total_ms: float
    cancelled: bool


class Accounts:
    def __init__(
        self,
        store: Store,
        *,
        required: bool,
        session_ttl: float = 3600.0,
        allow_signup: bool = False,
        signup_balance: int | None = None,
        ledger: bool = True,
        max_keep_alive: float | None = None,
        login_attempts: int = 5,
        login_lockout: float = 900.0,
        signups_per_hour: int = 5,
        signup_approval: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.required = required
        """Whether requests must carry a key or session (else they run as ``LOCAL``)."""
        self.allow_signup = allow_signup
        self.signup_balance = signup_balance
        self.signup_approval = signup_approval
        """New sign-ups stay disabled until an admin enables them."""
        self.max_keep_alive = max_keep_alive
        """The longest keep-alive a non-admin's request may set (``api.auth.keep_alive_for``)."""
        self.login_brake = LoginBrake(login_attempts, login_lockout, clock)
        self.signup_brake = SignupBrake(signups_per_hour, clock)
        self.limiter = RateLimiter(clock)
        self.shared: Shared | None = None
        """Set in a following gateway: the rate limits are counted by the leader's."""
        self.wallets = Wallets(store)
        self.ledger = LedgerWriter(store, self.wallets)
        """Writes the usage rows (when ``keep_rows``) and the credit in hand back."""
        self.keep_rows = ledger
        self._session_ttl = session_ttl
        self._sessions: Sessions | None = None
        self._clock = clock
        self._keys: dict[str, tuple[float, tuple[dict[str, Any], Principal] | None]] = {}
        self._users: dict[int, tuple[float, dict[str, Any] | None]] = {}
        self._loading: dict[str, asyncio.Future[tuple[dict[str, Any], Principal] | None]] = {}
        self._prepared: asyncio.Future[str] | None = None

    async def start(self) -> None:
        self._sessions = Sessions(await self.store.secret(_SECRET), self._session_ttl)
        self.ledger.start()
        self._prepared = prepare()

    async def close(self) -> None:
        await self.ledger.close()
        await self.store.close()

    async def bootstrap(self) -> str | None:
        """When keys are required and there are none, makes an admin key and prints it (to the
        terminal, once; never to a log); returns it."""
        if not self.required or await self.store.count_keys():
            return None
        key, _ = await self.create_key(name="admin", role=Role.ADMIN)
        sys.stderr.write(
            "\n  No API keys exist yet: this admin key was made (it is shown only now, keep "
            f"it safe):\n\n    {key}\n\n  Use it as MODELYARD_API_KEY for the CLI, or "
            "`Authorization: Bearer …` for clients.\n\n"
        )
        sys.stderr.flush()
        return key

    # ---- who is asking ----------------------------------------------------------------------

    async def authenticate(self, token: str | None) -> Principal:
        """The principal of a key or session token; ``AuthenticationError`` (401) else."""
        if not self.required:
            return LOCAL
        if not token:
            raise AuthenticationError(
                "No API key: send one as 'Authorization: Bearer my-…' (or in 'x-api-key')"
            )
        if looks_like_session(token):
            return await self._session(token)
        ident = identity.key_id(token)
        found = await self._key(ident) if ident is not None else None
        if found is None or not identity.matches(token, found[0]["hash"]):
            raise AuthenticationError("Invalid API key")
        record, principal = found
        if not record["enabled"] or record["user_enabled"] is False:
            raise AuthenticationError("This API key was revoked")
        if record["expires_at"] is not None and record["expires_at"] <= time.time():
            raise AuthenticationError("This API key has expired")
        return principal

    async def _key(self, ident: str) -> tuple[dict[str, Any], Principal] | None:
        now = self._clock()
        cached = self._keys.get(ident)
        if cached is not None and now - cached[0] < CACHE_TTL:
            return cached[1]
        # The requests that find it stale at once share one query.
        loading = self._loading.get(ident)
        if loading is None:
            loading = self._loading[ident] = asyncio.ensure_future(self._load_key(ident, now))
            loading.add_done_callback(lambda _: self._loading.pop(ident, None))
        return await asyncio.shield(loading)

    async def _load_key(self, ident: str, now: float) -> tuple[dict[str, Any], Principal] | None:
        record = await self.store.key(ident)
        found = (record, _key_principal(record)) if record is not None else None
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[ident] = (now, found)
        return found

    async def _session(self, token: str) -> Principal:
        assert self._sessions is not None
        session = self._sessions.check(token)
        if session is None:
            raise AuthenticationError("The session is invalid or has expired: log in again")
        now = self._clock()
        cached = self._users.get(session.user_id)
        if cached is not None and now - cached[0] < CACHE_TTL:
            user = cached[1]
        else:
            user = await self.store.user_by_id(session.user_id)
            self._users[session.user_id] = (now, user)
        if user is None or not user["enabled"]:
            raise AuthenticationError("The session's user was removed or disabled")
        return Principal(
            Role(user["role"]),
            "session",
            user_id=user["id"],
            username=user["name"],
            user_models=tuple(user["models"]),
            user_limits=_limits(user, ""),
            user_balance=user["balance"] is not None,
        )

    def forget(self) -> None:
        """Drops the cached keys and users (after this gateway changed some)."""
        self._keys.clear()
        self._users.clear()

    async def login(
        self, username: str, password: str, address: str = ""
    ) -> tuple[str, float, str]:
        """A session token for a user's password: ``(token, expires_at, role)``. Wrong
        passwords from one ``address`` or for one user name slow the next tries down
        (``accounts.brakes``)."""
        assert self._sessions is not None
        subjects = (f"user:{username}", f"address:{address}")
        self.login_brake.check(subjects)
        _check_password(password)
        try:
            user: dict[str, Any] | None = await self.store.user(username)
        except NotFoundError:
            user = None
        ok = await verify_password(user["password_hash"] if user else None, password)
        if user is None or not ok:
            self.login_brake.missed(subjects)
            raise AuthenticationError("Wrong user name or password", param="password")
        self.login_brake.passed(subjects)
        if not user["enabled"]:
            raise AuthenticationError(
                "This account is disabled (a new sign-up waits for an admin to enable it)",
                param="username",
            )
        token, expires = self._sessions.issue(user["id"], user["name"])
        return token, expires, str(user["role"])

    # ---- limits and balances ----------------------------------------------------------------

    async def admit(self, principal: Principal, estimate: int, worst: int, price: float) -> Charge:
        """Counts a request against its rate limits and reserves its worst case on its
        balances; raises 429 ``rate_limit_exceeded`` or ``insufficient_quota``."""
        subjects: list[tuple[str, Limits]] = []
        if principal.key_id is not None:
            subjects.append((f"key:{principal.key_id}", principal.key_limits))
        if principal.user_id is not None:
            subjects.append((f"user:{principal.user_id}", principal.user_limits))
        if self.shared is not None and limited(subjects):
            admission = await self.shared.admit(subjects, estimate)
        else:
            admission = self.limiter.admit(subjects, estimate)
        charge = Charge(principal, admission)
        wallets = _wallets(principal)
        if wallets:
            amount = max(1, math.ceil(worst * price))
            try:
                ok = await self.wallets.reserve(wallets, amount)
            except BaseException:
                self._finish(admission, 0)
                raise
            if not ok:
                self._finish(admission, 0)
                raise InsufficientQuotaError(
                    f"The token balance is too low for this request: it may use up to {worst} "
                    f"tokens ({amount} at this model's price). Lower max_tokens, or ask an "
                    "admin to add to the balance",
                    headers=admission.headers,
                )
            charge.reserved = amount
            charge.wallets = wallets
        return charge

    def settle(self, charge: Charge, tokens: int, price: float, request_id: str) -> int:
        """The request used ``tokens``: frees its rate-limit place, settles its reservation
        (the rest given back, or a shortfall taken from the credit in hand) and returns what
        it costs. Once: a second call returns the first's cost."""
        if charge.cost is not None:
            return charge.cost
        cost = math.ceil(tokens * price)
        self._finish(charge.admission, tokens)
        if charge.reserved:
            cost = self._settle(charge, cost, request_id)
        charge.cost = cost
        return cost

    def _finish(self, admission: Admission, tokens: int) -> None:
        if admission.remote and self.shared is not None:
            self.shared.finish(admission, tokens)
        else:
            self.limiter.finish(admission, tokens)

    def finish(self, principal: Principal | None, charge: Charge | None, usage: Usage) -> None:
        """The request is over: writes its ledger row (in the next batch) with what it was
        charged. The serving layer settles a charge beside the lease's release; one it left
        unsettled is a fault, logged, and settled here so that no reservation is kept."""
        tokens = usage.prompt_tokens + usage.completion_tokens
        cost = math.ceil(tokens * usage.price)
        if charge is not None:
            if charge.cost is None:
                log.error("request %s ended with its charge unsettled", usage.request_id)
            cost = self.settle(charge, tokens, usage.price, usage.request_id)
        if principal is None or not self.keep_rows:
            return
        self.ledger.append(
            UsageRow(
                time=usage.time,
                request_id=usage.request_id,
                key_id=principal.key_id,
                key_name=principal.key_name,
                username=principal.username,
                user_id=principal.user_id,
                model=usage.model,
                route=usage.route,
                status=usage.status,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cost=cost,
                queue_ms=usage.queue_ms,
                load_ms=usage.load_ms,
                ttft_ms=usage.ttft_ms,
                total_ms=usage.total_ms,
                cancelled=usage.cancelled,
            )
        )

    def _settle(self, charge: Charge, cost: int, request_id: str) -> int:
        """Gives back what ``charge`` reserved beyond ``cost``; takes what it used beyond its
        reservation (a prompt longer than its bound: images) from the credit in hand, never
        below zero. Returns what was charged."""
        extra = cost - charge.reserved
        if extra > 0:
            got = {wallet: self.wallets.take_now(wallet, extra) for wallet in charge.wallets}
            taken = min(got.values())
            for wallet, amount in got.items():  # each balance gives the same
                self.wallets.give_back(wallet, amount - taken)
            if taken < extra:
                log.warning(
                    "request %s used %d tokens' worth more than it reserved; %d of them were "
                    "in hand to charge",
                    request_id,
                    extra,
                    taken,
                )
            return charge.reserved + taken
        for wallet in charge.wallets:
            self.wallets.give_back(wallet, -extra)
        return cost

    # ---- keys and users ---------------------------------------------------------------------

    async def create_key(
        self, *, name: str, role: Role, user: str | None = None, **fields: Any
    ) -> tuple[str, dict[str, Any]]:
        """A new key (shown only now) and its record."""
        user_id = None
        if user is not None:
            owner = await self.store.user(user)
            user_id = owner["id"]
            if _rank(role) > _rank(Role(owner["role"])):
                raise InvalidRequestError(
                    f"A key of user {user!r} ({owner['role']}) cannot have the role {role}",
                    param="role",
                )
        key, ident, digest = identity.new_key()
        values = {"priority": 1.0, "enabled": True, **fields}
        await self.store.add_key(
            {
                "id": ident,
                "hash": digest,
                "name": name,
                "role": str(role),
                "user_id": user_id,
                **values,
            }
        )
        record = await self.store.key(ident)
        assert record is not None
        return key, record

    async def update_key(self, ref: str, values: Mapping[str, Any]) -> dict[str, Any]:
        record = await self.store.find_key(ref)
        if _demotes(values):
            await self._keep_an_admin({f"key:{record['id']}"})
        if values:
            await self.store.update_key(record["id"], values)
        self.forget()
        updated = await self.store.key(record["id"])
        assert updated is not None
        return updated

    async def add_user(self, name: str, password: str | None, values: Mapping[str, Any]) -> int:
        hashed = None
        if password is not None:
            _check_password(password)
            hashed = await hash_password(password)
        return await self.store.add_user(name, {"enabled": True, "password_hash": hashed, **values})

    async def signup(self, name: str, password: str, address: str = "") -> int:
        """A new ``user`` with ``signup_balance``; disabled until an admin enables it when
        ``signup_approval``. At most ``signups_per_hour`` from one ``address``."""
        _check_password(password)
        self.signup_brake.admit(address)
        values = {
            "role": str(Role.USER),
            "balance": self.signup_balance,
            "enabled": not self.signup_approval,
        }
        return await self.add_user(name, password, values)

    async def update_user(self, name: str, values: Mapping[str, Any]) -> None:
        values = dict(values)
        if "password" in values:
            password = values.pop("password")
            _check_password(password)
            values["password_hash"] = await hash_password(password)
        if _demotes(values):
            await self._keep_an_admin(await self._ways_of(name))
        await self.store.update_user(name, values)
        self.forget()

    async def remove_user(self, name: str) -> None:
        await self._keep_an_admin(await self._ways_of(name))
        await self.store.remove_user(name)
        self.forget()

    async def _admin_ways(self) -> set[str]:
        """Every credential that can act as an admin now: enabled, unexpired admin keys (of
        an enabled admin user, when bound to one) and enabled admin users with a password."""
        now = time.time()
        ways = {
            f"key:{k['id']}"
            for k in await self.store.keys()
            if k["enabled"]
            and k["role"] == Role.ADMIN
            and (k["expires_at"] is None or k["expires_at"] > now)
            and (k["user_id"] is None or (k["user_enabled"] and k["user_role"] == Role.ADMIN))
        }
        for user in await self.store.users():
            if user["enabled"] and user["role"] == Role.ADMIN and user["password_hash"]:
                ways.add(f"user:{user['name']}")
        return ways

    async def _ways_of(self, name: str) -> set[str]:
        """The credentials a change to user ``name`` touches: the user and its keys."""
        user = await self.store.user(name)
        keys = await self.store.keys(user_id=user["id"])
        return {f"user:{name}", *(f"key:{k['id']}" for k in keys)}

    async def _keep_an_admin(self, losing: set[str]) -> None:
        """Refuses a change that would leave no way in as an admin (``losing``: the
        credentials it revokes, disables or demotes): nobody could manage the server again."""
        ways = await self._admin_ways()
        if ways and ways <= losing:
            raise ConflictError(
                "This is the last admin credential: make another admin key or admin user "
                "first (modelyard keys create NAME --role admin), then revoke this one"
            )


def _demotes(values: Mapping[str, Any]) -> bool:
    """The change disables a credential or takes its admin role away."""
    return values.get("enabled") is False or values.get("role", Role.ADMIN) != Role.ADMIN


def _wallets(principal: Principal) -> tuple[Wallet, ...]:
    wallets: list[Wallet] = []
    if principal.key_balance and principal.key_id is not None:
        wallets.append(("key", principal.key_id))
    if principal.user_balance and principal.user_id is not None:
        wallets.append(("user", principal.user_id))
    return tuple(wallets)


def _key_principal(record: Mapping[str, Any]) -> Principal:
    has_user = record["user_id"] is not None
    return Principal(
        Role(record["role"]),
        "key",
        key_id=record["id"],
        key_name=record["name"],
        user_id=record["user_id"],
        username=record["user_name"],
        models=tuple(record["models"]),
        user_models=tuple(record["user_models"]) if has_user else (),
        key_limits=_limits(record, ""),
        user_limits=_limits(record, "user_") if has_user else Limits(),
        priority=float(record["priority"]),
        key_balance=record["balance"] is not None,
        user_balance=has_user and record["user_balance"] is not None,
    )


def _limits(record: Mapping[str, Any], prefix: str) -> Limits:
    return Limits(record[f"{prefix}rpm"], record[f"{prefix}tpm"], record[f"{prefix}max_concurrent"])


_RANKS = {Role.MONITOR: 0, Role.USER: 1, Role.ADMIN: 2}


def _rank(role: Role) -> int:
    return _RANKS[role]


def _check_password(password: str) -> None:
    if len(password) > MAX_PASSWORD:
        raise InvalidRequestError(
            f"The password is longer than {MAX_PASSWORD} characters", param="password"
        )
    if len(password) < MIN_PASSWORD:
        raise InvalidRequestError(
            f"The password must have at least {MIN_PASSWORD} characters", param="password"
        )
