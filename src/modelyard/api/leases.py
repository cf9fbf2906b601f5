"""The leading gateway's side of several gateways: the leases the others hold.

A gateway that does not lead asks the leader for a lease on a model (``POST
/api/gateway/lease``), sends the request straight to the runner the lease names, and gives
the lease back (``/api/gateway/release``). The leader takes each lease from its own
scheduler, like a request of its own: the same queue, fair shares, loads and evictions.

The calls are answered by ``answer``, ahead of the app's other layers (``api.forward``).
A lease is named by the asking gateway (``id``), so that a gateway whose client left while
it waited can give back a lease it never heard of: the wait is cancelled, or, when the
release comes first, the lease is never taken. Gateways beat every second; one silent for
``SILENCE`` seconds is gone, and so are its leases (none leaks when a gateway dies).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from modelyard.accounts.identity import Limits
from modelyard.accounts.limits import Admission, RateLimiter
from modelyard.api.errors import error_response
from modelyard.errors import (
    AuthenticationError,
    InvalidRequestError,
    ModelyardError,
    NotFoundError,
)
from modelyard.scheduler import UNSET, Lease, Scheduler, Unset

log = logging.getLogger(__name__)

SILENCE = 5.0
"""Seconds without a beat after which a gateway is gone, and its leases returned."""
TOKEN_HEADER = "x-modelyard-gateway"
"""Carries the gateways' shared token (``Store.secret("gateway-token")``, hashed)."""
_TOKEN_BYTES = TOKEN_HEADER.encode()
_FORGET = 60.0
"""Seconds a release that came before its lease is remembered."""


@dataclass
class _Held:
    gateway: str
    lease: Lease | None = None
    waiting: asyncio.Task[Lease] | None = None


class Leases:
    """The leases other gateways hold on ``scheduler`` (see the module)."""

    def __init__(
        self,
        scheduler: Scheduler,
        token: str,
        *,
        limiter: RateLimiter | None = None,
        silence: float = SILENCE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._scheduler = scheduler
        self._limiter = limiter
        """The rate limits of every gateway's requests (this one's own accounts')."""
        self._admitted: dict[str, tuple[str, Admission]] = {}
        """Another gateway's requests counted against the rate limits: name → (gateway,
        what it counts against)."""
        self._token = token
        self._silence = silence
        self._clock = clock
        self._held: dict[str, _Held] = {}
        self._seen: dict[str, float] = {}
        """Gateway → when it was last heard of."""
        self._released: dict[str, float] = {}
        """Lease ids given back before they were taken → when."""
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_every(), name="gateway leases")

    def trusts(self, token: str | None) -> bool:
        """Whether ``token`` is the gateways' own."""
        return token is not None and hmac.compare_digest(token.encode(), self._token.encode())

    def check(self, token: str | None) -> None:
        if not self.trusts(token):
            raise AuthenticationError("not a gateway of this cluster (wrong or no token)")

    @property
    def held(self) -> int:
        """Leases granted to other gateways and not yet given back."""
        return sum(1 for h in self._held.values() if h.lease is not None)

    def gateways(self) -> dict[str, float]:
        """The gateways heard from, and when (``time.monotonic``)."""
        return dict(self._seen)

    async def acquire(
        self,
        ident: str,
        gateway: str,
        model: str,
        keep_alive: float | Unset | None,
        *,
        request: str,
        client: str,
        weight: float,
    ) -> Lease | None:
        """The lease ``ident`` for ``gateway``; ``None`` when it was given back meanwhile (or
        is still awaited by an earlier ask)."""
        self._seen[gateway] = self._clock()
        if self._released.pop(ident, None) is not None:
            return None
        held = self._held.get(ident)
        if held is not None:  # asked again (the answer was lost on the way): the same lease
            return held.lease
        waiting = asyncio.ensure_future(
            self._scheduler.acquire(
                model, keep_alive, request=request, client=client, weight=weight
            )
        )
        held = self._held[ident] = _Held(gateway, waiting=waiting)
        try:
            lease = await waiting
        except asyncio.CancelledError:
            waiting.cancel()
            self._held.pop(ident, None)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this gateway stops, not a release
            return None
        except BaseException:
            self._held.pop(ident, None)
            raise
        held.waiting = None
        held.lease = lease
        return lease

    def release(self, ident: str, *, served: bool) -> None:
        held = self._held.pop(ident, None)
        if held is None:
            self._released[ident] = self._clock()
            return
        if held.waiting is not None:
            held.waiting.cancel()
        if held.lease is not None:
            self._scheduler.release(held.lease, served=served)

    async def unreachable(self, ident: str) -> bool:
        """The runner of lease ``ident`` refused its request: whether it is gone (see
        ``Scheduler.runner_unreachable``)."""
        held = self._held.get(ident)
        if held is None or held.lease is None:
            return True
        return await self._scheduler.runner_unreachable(held.lease)

    def admit(
        self, ident: str, gateway: str, subjects: list[tuple[str, Limits]], tokens: int
    ) -> dict[str, str]:
        """Counts another gateway's request against the rate limits (``RateLimitError``
        when one is reached); the ``x-ratelimit-*`` headers for its answer."""
        self._seen[gateway] = self._clock()
        if self._limiter is None:
            return {}
        admission = self._limiter.admit(subjects, tokens)
        self._admitted[ident] = (gateway, admission)
        return admission.headers

    def finish(self, ident: str, tokens: int) -> None:
        """The request admitted as ``ident`` is over and used ``tokens``."""
        found = self._admitted.pop(ident, None)
        if found is not None and self._limiter is not None:
            self._limiter.finish(found[1], tokens)

    async def unload(self, model: str) -> None:
        await self._scheduler.unload(model)

    def beat(self, gateway: str) -> None:
        self._seen[gateway] = self._clock()

    def sweep(self) -> list[str]:
        """Returns the leases of gateways gone silent; the gateways it found gone."""
        now = self._clock()
        gone = [g for g, seen in self._seen.items() if now - seen > self._silence]
        for gateway in gone:
            del self._seen[gateway]
            for ident in [i for i, h in self._held.items() if h.gateway == gateway]:
                self.release(ident, served=False)
            for ident in [i for i, (g, _) in self._admitted.items() if g == gateway]:
                self.finish(ident, 0)
            log.warning("gateway %s went silent: its leases are returned", gateway)
        for ident in [i for i, when in self._released.items() if now - when > _FORGET]:
            del self._released[ident]
        return gone

    async def _sweep_every(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.sweep()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for ident in list(self._held):
            self.release(ident, served=False)


PREFIX = "/api/gateway/"
"""The gateways' calls to their leader: ``lease``, ``release``, ``unreachable``, ``unload``,
``beat``, and ``admit`` and ``finish`` (the rate limits, counted here for every gateway)."""


async def answer(leases: Leases | None, scope: Scope, receive: Receive, send: Send) -> None:
    """Answers a gateway's call to this one (``leases``: ``None`` unless it leads). The
    calls are on every request a following gateway serves: they go by the app's other
    layers (keys, routes), and are answered only to the gateways' token."""
    try:
        if leases is None:
            raise NotFoundError("this gateway does not lead the gateways of a cluster")
        handler = _CALLS.get(scope["path"].removeprefix(PREFIX))
        if handler is None or scope["method"] != "POST":
            raise NotFoundError(f"no gateway call {scope['method']} {scope['path']}")
        token = None
        for name, value in scope["headers"]:
            if name == _TOKEN_BYTES:
                token = value.decode("latin-1")
        leases.check(token)
        status, payload = await handler(leases, await _body(receive))
    except ModelyardError as exc:
        response: Response = error_response(exc)
    else:
        response = Response(
            orjson.dumps(payload) if payload is not None else b"",
            status_code=status,
            media_type="application/json" if payload is not None else None,
        )
    await response(scope, receive, send)


async def _body(receive: Receive) -> dict[str, Any]:
    raw = bytearray()
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            break
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object")
    return body


def _string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(f"{name} must be a non-empty string", param=name)
    return value


def _keep_alive(body: dict[str, Any]) -> float | Unset | None:
    if "keep_alive" not in body:
        return UNSET
    value = body["keep_alive"]
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return None if value is None else float(value)
    raise InvalidRequestError("keep_alive must be seconds or null", param="keep_alive")


Answer = tuple[int, dict[str, Any] | None]


async def _lease(leases: Leases, body: dict[str, Any]) -> Answer:
    weight = body.get("weight", 1.0)
    if not isinstance(weight, int | float) or isinstance(weight, bool) or weight <= 0:
        raise InvalidRequestError("weight must be a positive number", param="weight")
    granted = await leases.acquire(
        _string(body, "id"),
        _string(body, "gateway"),
        _string(body, "model"),
        _keep_alive(body),
        request=str(body.get("request", "")),
        client=str(body.get("client", "")),
        weight=float(weight),
    )
    if granted is None:
        return 409, {"released": True}
    return 200, {
        "model": granted.model,
        "base_url": granted.base_url,
        "headers": dict(granted.headers),
        "queued": granted.queued,
        "load_wait": granted.load_wait,
        "generation": granted.generation,
        "replica": granted.replica,
    }


async def _release(leases: Leases, body: dict[str, Any]) -> Answer:
    leases.release(_string(body, "id"), served=body.get("served") is True)
    return 204, None


async def _unreachable(leases: Leases, body: dict[str, Any]) -> Answer:
    return 200, {"gone": await leases.unreachable(_string(body, "id"))}


async def _unload(leases: Leases, body: dict[str, Any]) -> Answer:
    await leases.unload(_string(body, "model"))
    return 204, None


async def _admit(leases: Leases, body: dict[str, Any]) -> Answer:
    subjects = body.get("subjects")
    tokens = body.get("tokens")
    if not isinstance(subjects, list) or not isinstance(tokens, int):
        raise InvalidRequestError("subjects must be a list and tokens an integer")
    try:
        limits = [(str(name), Limits(**given)) for name, given in subjects]
    except (TypeError, ValueError):
        limits = []
    if not limits or not all(_counts(limit) for _, limit in limits):
        raise InvalidRequestError("subjects: [name, {rpm, tpm, max_concurrent}] each")
    headers = leases.admit(_string(body, "id"), _string(body, "gateway"), limits, tokens)
    return 200, {"headers": headers}


def _counts(limits: Limits) -> bool:
    given = (limits.rpm, limits.tpm, limits.max_concurrent)
    return all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in given)


async def _finish(leases: Leases, body: dict[str, Any]) -> Answer:
    tokens = body.get("tokens", 0)
    leases.finish(_string(body, "id"), tokens if isinstance(tokens, int) else 0)
    return 204, None


async def _beat(leases: Leases, body: dict[str, Any]) -> Answer:
    leases.beat(_string(body, "gateway"))
    return 204, None


_CALLS: dict[str, Callable[[Leases, dict[str, Any]], Awaitable[Answer]]] = {
    "lease": _lease,
    "release": _release,
    "unreachable": _unreachable,
    "unload": _unload,
    "beat": _beat,
    "admit": _admit,
    "finish": _finish,
}
