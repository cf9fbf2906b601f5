"""Who may call which route: every request is authenticated (when accounts require it) and
checked against the route's rule before any route code runs.

A rule names the roles a route is for (``RULES``, from ``api.routes``); a route without one
answers nobody but an admin, and a test fails for every route that has none, so that a new
route cannot be forgotten. Keys come in ``Authorization: Bearer`` or ``x-api-key``
(Anthropic's clients); sessions from ``POST /api/login`` as ``Bearer`` too. A key in the
URL's query string is refused: URLs end up in logs and browser histories.

The principal is put into the request's state; the routes that serve models check it
against the model (``check_model``), and ``Dispatch`` charges it.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from modelyard.accounts import identity
from modelyard.accounts.credential import looks_like_session
from modelyard.accounts.identity import LOCAL, Principal, Role
from modelyard.accounts.service import Accounts
from modelyard.api.errors import error_response
from modelyard.api.request import keep_alive_of
from modelyard.api.routes import ANY, PUBLIC, RULES, Access
from modelyard.catalog.spec import ModelSpec
from modelyard.errors import (
    AuthenticationError,
    InvalidRequestError,
    ModelNotAllowedError,
    ModelyardError,
    RoleError,
)
from modelyard.scheduler import UNSET, Unset

_KEY_PARAMS = frozenset({"api_key", "apikey", "key", "token", "access_token", "api-key"})


class Rules:
    """``RULES`` compiled for lookup by a request's method and concrete path."""

    def __init__(self, rules: dict[tuple[str, str], Access]) -> None:
        self._exact: dict[tuple[str, str], Access] = {}
        self._prefixed: list[tuple[str, str, Access]] = []
        for (method, path), access in rules.items():
            if "{" in path:
                self._prefixed.append((method, path[: path.index("{")], access))
            else:
                self._exact[(method, path)] = access
        self._prefixed.sort(key=lambda r: -len(r[1]))

    def access(self, method: str, path: str) -> Access | None:
        """The rule for a request; ``None`` when no rule names it."""
        method = "GET" if method == "HEAD" else method
        found = self._exact.get((method, path))
        if found is not None:
            return found
        for rule_method, prefix, access in self._prefixed:
            if method == rule_method and path.startswith(prefix) and len(path) > len(prefix):
                return access
        return None


class Auth:
    """ASGI middleware: authenticates and applies ``RULES`` (see the module)."""

    def __init__(self, app: ASGIApp, rules: Rules | None = None) -> None:
        self.app = app
        self.rules = rules or Rules(RULES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        accounts: Accounts | None = getattr(scope["app"].state, "accounts", None)
        state = scope.setdefault("state", {})
        if accounts is None or not accounts.required:
            state["principal"] = LOCAL
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        access = self.rules.access(method, scope["path"])
        if method == "OPTIONS" or access is PUBLIC:
            await self.app(scope, receive, send)
            return
        try:
            principal = await accounts.authenticate(_credential(scope))
            access = access or ANY  # no such route: the router answers 404 or 405
            if not access.allows(principal.role):
                raise RoleError(
                    f"The role {principal.role} may not use {method} {scope['path']} "
                    f"({access.name}: {', '.join(sorted(access.roles))})"
                )
        except ModelyardError as exc:
            await error_response(exc, path=scope["path"])(scope, receive, send)
            return
        state["principal"] = principal
        await self.app(scope, receive, send)


def _credential(scope: Scope) -> str | None:
    query = scope.get("query_string", b"")
    if query and any(
        name.lower() in _KEY_PARAMS and (name.lower() != "key" or _secret(value))
        for name, value in _params(query)
    ):
        raise InvalidRequestError(
            "API keys are not accepted in the URL (URLs are logged and kept in histories): "
            "send 'Authorization: Bearer <key>'"
        )
    authorization: bytes | None = None
    x_api_key: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value
        elif name == b"x-api-key":
            x_api_key = value
    raw = authorization if authorization is not None else x_api_key
    if raw is None:
        return None
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise AuthenticationError("Invalid API key") from None
    if authorization is not None:
        scheme, _, token = text.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("The Authorization header must be 'Bearer <key>'")
        return token.strip()
    return text


def _secret(value: str) -> bool:
    """Whether a ``key`` query value is a key or session token (``/api/usage?key=NAME`` names
    a key; it is not one)."""
    return value.startswith(identity.KEY_PREFIX) or looks_like_session(value)


def _params(query: bytes) -> Iterable[tuple[str, str]]:
    return parse_qsl(query.decode("latin-1"), keep_blank_values=True)


def principal_of(request: Request) -> Principal:
    """Whom the request is served for, as ``AuthMiddleware`` admitted it. Fails closed: a
    request it did not admit (a public route) has no principal, and is refused, never
    served as an admin."""
    principal: Principal | None = request.scope.get("state", {}).get("principal")
    if principal is None:
        raise AuthenticationError("This request carries no accepted credential")
    return principal


def check_model(principal: Principal, spec: ModelSpec) -> None:
    """403 ``model_not_allowed`` unless the principal may use the model."""
    if not principal.may_use((spec.name, *spec.aliases)):
        raise ModelNotAllowedError(
            f"This key may not use the model {spec.name!r} (see GET /v1/models for its models)",
            param="model",
        )


def may_see(principal: Principal, spec: ModelSpec) -> bool:
    return principal.may_use((spec.name, *spec.aliases))


def keep_alive_for(
    principal: Principal, spec: ModelSpec, asked: float | Unset | None, ceiling: float | None
) -> float | Unset | None:
    """The keep-alive a request may set: how long ``spec`` stays loaded after it, for
    everyone. An admin's is taken as asked. Anyone else may only lengthen the model's own, up
    to ``ceiling`` (``[auth] max_keep_alive``; unset: not at all); never unload it at once,
    keep it forever, or shorten it for others."""
    if principal.role is Role.ADMIN or isinstance(asked, Unset):
        return asked
    own = spec.keep_alive
    if ceiling is None or own is None:  # nothing to lengthen, or already forever
        return UNSET
    wanted = ceiling if asked is None or asked < 0 else min(asked, ceiling)
    return wanted if wanted > own else UNSET


def residency(request: Request, spec: ModelSpec, raw: str | float | None) -> float | Unset | None:
    """The keep-alive of ``request`` for ``spec`` (``keep_alive_for``) from its raw field."""
    accounts: Accounts | None = request.app.state.accounts
    ceiling = accounts.max_keep_alive if accounts is not None else None
    return keep_alive_for(principal_of(request), spec, keep_alive_of(raw), ceiling)
