"""A gateway that does not lead: the scheduler as it sees it, through the leader's leases.

``Broker`` stands where the scheduler stands in a leading gateway, for the routes that serve
models: the catalog is this gateway's own (every gateway reads the same config), a lease is
the leader's (``api.leases``), and the request then goes straight to the runner the lease
names, as the leader's own would. What the other routes show (what is loaded, events,
nodes) is the leader's: ``api.forward`` passes those requests on to it.

When the leader is lost, a request waiting for a lease waits for the next leader (up to
``FAILOVER`` seconds); when that leader is this gateway, it takes its lease from its own
scheduler (``Link.promoted``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from secrets import token_hex
from typing import Any

import orjson

from modelyard.accounts.identity import Limits
from modelyard.accounts.limits import Admission, RateLimiter
from modelyard.api.leases import TOKEN_HEADER
from modelyard.api.proxy import Upstream
from modelyard.catalog.catalog import Catalog, CatalogChange
from modelyard.catalog.spec import ModelSpec
from modelyard.errors import RunnerError, UpstreamError
from modelyard.scheduler import UNSET, Lease, Listed, ModelState, ModelStatus, Scheduler, Unset
from modelyard.scheduler.journal import Journal

log = logging.getLogger(__name__)

FAILOVER = 30.0
"""Seconds a request waits for a new leader when the one it asked is lost."""


class Link:
    """This gateway's view of who leads: the leader's URL, or this gateway's own scheduler
    once it leads."""

    def __init__(self, name: str, token: str) -> None:
        self.name = name
        """This gateway's URL: its name to the leader."""
        self.headers: Mapping[str, str] = {TOKEN_HEADER: token}
        self.leader: str | None = None
        self.promoted: Scheduler | None = None
        self._changed = asyncio.Event()

    def follow(self, leader: str | None) -> None:
        if leader != self.leader:
            self.leader = leader
            self._changed.set()
            self._changed = asyncio.Event()

    def promote(self, scheduler: Scheduler) -> None:
        self.promoted = scheduler
        self.follow(None)

    async def changed(self, within: float) -> None:
        """Returns when the leader changes, or after ``within`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), within)


@dataclass(eq=False)
class BrokeredLease(Lease):
    ident: str = ""
    """The lease's name at the leader."""


class Broker:
    """The scheduler of a gateway that follows (see the module)."""

    def __init__(
        self,
        catalog: Catalog,
        link: Link,
        upstream: Upstream,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._catalog = catalog
        self._link = link
        self._upstream = upstream
        self._limiter = limiter or RateLimiter()
        """This gateway's own rate limits: counted here once it leads."""
        self._calls: set[asyncio.Task[None]] = set()
        self.journal = Journal(1)
        """Empty: the leader's event log is the cluster's."""

    # ---- what the routes that serve models ask -------------------------------------------

    def spec(self, name: str) -> ModelSpec:
        return self._catalog.get(name)

    def state(self, name: str) -> ModelState:
        self._catalog.get(name)
        return ModelState.STOPPED  # what runs is the leader's to say

    async def acquire(
        self,
        name: str,
        keep_alive: float | Unset | None = UNSET,
        *,
        request: str = "",
        client: str = "",
        weight: float = 1.0,
    ) -> Lease:
        spec = self._catalog.get(name)
        ident = token_hex(12)
        payload: dict[str, Any] = {
            "id": ident,
            "gateway": self._link.name,
            "model": spec.name,
            "request": request,
            "client": client,
            "weight": weight,
        }
        if not isinstance(keep_alive, Unset):
            payload["keep_alive"] = keep_alive
        started = time.perf_counter()
        deadline = time.monotonic() + FAILOVER
        try:
            while True:
                if self._link.promoted is not None:
                    return await self._link.promoted.acquire(
                        name, keep_alive, request=request, client=client, weight=weight
                    )
                status, body, headers = await self._ask("lease", payload, deadline)
                if status == 200:
                    break
                if status != 0:
                    raise relayed(status, body, headers)
        except asyncio.CancelledError:
            self._tell("release", {"id": ident, "served": False})
            raise
        granted = orjson.loads(body)
        return BrokeredLease(
            model=spec.name,
            base_url=granted["base_url"],
            headers=granted["headers"],
            queued=time.perf_counter() - started,
            generation=granted["generation"],
            load_wait=granted["load_wait"],
            replica=granted["replica"],
            ident=ident,
        )

    def release(self, lease: Lease, *, served: bool = False) -> None:
        if lease.released:
            return
        if not isinstance(lease, BrokeredLease):
            if self._link.promoted is not None:
                self._link.promoted.release(lease, served=served)
            return
        lease.released = True
        self._tell("release", {"id": lease.ident, "served": served})

    async def runner_unreachable(self, lease: Lease, grace: float = 5.0) -> bool:
        if not isinstance(lease, BrokeredLease):
            if self._link.promoted is not None:
                return await self._link.promoted.runner_unreachable(lease, grace)
            return True
        status, body, _ = await self._ask(
            "unreachable", {"id": lease.ident}, time.monotonic() + grace
        )
        return status != 200 or bool(orjson.loads(body).get("gone", True))

    async def load(
        self, name: str, keep_alive: float | Unset | None = UNSET, *, request: str = ""
    ) -> None:
        self.release(await self.acquire(name, keep_alive, request=request or "POST /api/load"))

    async def unload(self, name: str) -> None:
        spec = self._catalog.get(name)
        if self._link.promoted is not None:
            await self._link.promoted.unload(spec.name)
            return
        status, body, headers = await self._ask(
            "unload", {"model": spec.name}, time.monotonic() + FAILOVER
        )
        if status not in (0, 204):
            raise relayed(status, body, headers)

    # ---- the rate limits, counted by the leader for every gateway (``accounts.Shared``) ----

    async def admit(self, subjects: Sequence[tuple[str, Limits]], tokens: int) -> Admission:
        """Counts a request against the leader's rate limits (``RateLimitError`` as the
        leader raised it, with its headers)."""
        ident = token_hex(12)
        payload = {
            "id": ident,
            "gateway": self._link.name,
            "subjects": [[name, asdict(limits)] for name, limits in subjects],
            "tokens": tokens,
        }
        try:
            status, body, headers = await self._ask("admit", payload, time.monotonic() + FAILOVER)
        except asyncio.CancelledError:
            self._tell("finish", {"id": ident, "tokens": 0})
            raise
        if status == 0:  # this gateway leads now
            return self._limiter.admit(subjects, tokens)
        if status != 200:
            raise relayed(status, body, headers)
        return Admission(tokens=tokens, headers=orjson.loads(body)["headers"], remote=ident)

    def finish(self, admission: Admission, tokens: int) -> None:
        if admission.finished:
            return
        admission.finished = True
        self._tell("finish", {"id": admission.remote, "tokens": tokens})

    async def beat(self) -> None:
        """Tells the leader this gateway is alive (and so are its leases)."""
        await self._ask("beat", {"gateway": self._link.name}, time.monotonic())

    # ---- what the leader answers for (its routes are the ones forwarded) ------------------

    def subscribe(self, listener: object) -> None:
        pass

    def listing(self) -> list[Listed]:
        return []

    def status(self) -> list[ModelStatus]:
        return []

    def runners(self, name: str) -> dict[int, object]:
        return {}

    def budgets(self) -> dict[str, dict[str, int]]:
        return {}

    def reserved_on(self) -> dict[str, dict[str, int]]:
        return {}

    async def prepare(self, specs: Iterable[ModelSpec] | None = None) -> None:
        pass

    def update_catalog(self, catalog: Catalog) -> CatalogChange:
        before = {spec.name: spec for spec in self._catalog}
        self._catalog = catalog
        after = {spec.name: spec for spec in catalog}
        return CatalogChange(
            added=sorted(after.keys() - before.keys()),
            removed=sorted(before.keys() - after.keys()),
            changed=sorted(n for n in after.keys() & before.keys() if after[n] != before[n]),
        )

    # ---- the calls to the leader ---------------------------------------------------------

    async def _ask(
        self, call: str, payload: dict[str, Any], deadline: float
    ) -> tuple[int, bytes, Mapping[str, str]]:
        """Status, body and headers of the leader's answer; status 0 when this gateway led
        meanwhile. A leader that cannot be reached is waited for until ``deadline``."""
        while True:
            leader = self._link.leader
            if leader is not None:
                try:
                    answer = await self._upstream.post(
                        f"{leader}/api/gateway/{call}", payload, self._link.headers
                    )
                    return answer.status, await answer.read(), answer.headers
                except RunnerError as exc:
                    log.warning("the leading gateway %s did not answer: %s", leader, exc)
            elif self._link.promoted is not None:
                return 0, b"", {}
            left = deadline - time.monotonic()
            if left <= 0:
                raise UpstreamError(
                    "no leading gateway answers: the cluster's gateways are choosing one; "
                    "try again in a few seconds",
                    status=503,
                    code="no_leader",
                )
            await self._link.changed(min(left, 1.0))

    def _tell(self, call: str, payload: dict[str, Any]) -> None:
        """Sends ``call`` in the background (a release: the client's answer does not wait)."""

        async def send() -> None:
            with contextlib.suppress(UpstreamError, RunnerError):
                await self._ask(call, payload, time.monotonic() + 5.0)

        task = asyncio.create_task(send(), name=f"gateway {call}")
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def close(self) -> None:
        if self._calls:
            await asyncio.wait(list(self._calls), timeout=5.0)


def relayed(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """The leader's error answer, as this gateway's own."""
    try:
        error = orjson.loads(body).get("error", {})
    except (orjson.JSONDecodeError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {"message": str(error)}
    relayed = UpstreamError(
        str(error.get("message") or f"the leading gateway answered {status}"),
        status=status,
        type=error.get("type"),
        param=error.get("param"),
        code=error.get("code"),
    )
    relayed.headers = {
        name.lower(): value
        for name, value in headers.items()
        if name.lower().startswith("x-ratelimit-")
    }
    retry = headers.get("retry-after")
    if retry is not None:
        with contextlib.suppress(ValueError):
            relayed.retry_after = float(retry)
    return relayed
