"""A model as the scheduler holds it: its runners, its queue, its failures; and what a
request gets (``Lease``) and what ``status()`` says."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from modelyard.catalog.spec import Footprint, ModelSpec
from modelyard.clock import Timer
from modelyard.errors import LoadFailedError, ModelyardError, QueueFullError, QueueTimeoutError
from modelyard.runners.base import RunningModel
from modelyard.scheduler.placement import LOCAL
from modelyard.scheduler.queue import FairQueue
from modelyard.scheduler.replica import Replica
from modelyard.scheduler.state import ModelState
from modelyard.scheduler.state import ModelState as S


class Unset:
    pass


UNSET: Final = Unset()
"""``keep_alive`` not given by the request: use the catalog's."""


@dataclass(eq=False)
class Lease:
    """The right to send one request to a model's runner at ``base_url``."""

    model: str
    base_url: str
    headers: Mapping[str, str]
    """Sent with the request: the runner's key."""
    queued: float
    """Seconds spent waiting (queue and load)."""
    generation: int
    load_wait: float = 0.0
    """Of ``queued``, the seconds spent waiting for the model to load."""
    replica: int = 0
    """Which of the model's runners it is for."""
    released: bool = False


@dataclass(eq=False)
class Waiter:
    seq: int
    future: asyncio.Future[Lease]
    enqueued_at: float
    keep_alive: float | Unset | None
    request: str = ""
    """Who asks, for the event log: a request id, ``POST /api/load`` or ``preload``."""
    client: str = ""
    """Whose request it is (an API key), for the turns in the queue."""
    weight: float = 1.0
    timer: Timer | None = None


@dataclass(eq=False)
class Model:
    spec: ModelSpec
    replicas: list[Replica] = field(default_factory=list)
    """One per runner the spec allows (``max_replicas``); the scheduler makes them."""
    waiters: FairQueue[Waiter] = field(default_factory=FairQueue)
    failures: int = 0
    """Loads that failed in a row: waiting requests fail fast until ``retry_at``."""
    retry_at: float = 0.0
    failed_event: int = 0
    """The journal entry of its last failed load."""
    over_estimate: bool = False
    """Its measured memory went past its estimate (reported once)."""
    last_error: str | None = None
    unreadable: bool = False
    """Its last load failed before a runner could start (its files cannot be read): shown as
    failed until a load succeeds or it is unloaded."""
    pending: ModelSpec | None = None
    """New settings from the catalog, applied when every runner of the model has stopped."""
    removed: bool = False
    """Gone from the catalog: finishing its requests, then forgotten."""

    @property
    def state(self) -> ModelState:
        """The model's state, from its runners': ready if one is, else loading if one is, …"""
        states = {r.state for r in self.replicas}
        for state in (S.READY, S.LOADING, S.UNLOADING, S.SLEEPING):
            if state in states:
                return state
        failed = ModelState.FAILED in states or self.unreadable
        return ModelState.FAILED if failed else ModelState.STOPPED

    @property
    def leases(self) -> int:
        return sum(r.leases for r in self.replicas)

    @property
    def live(self) -> int:
        """Runners serving or about to."""
        if len(self.replicas) == 1:
            return 1 if self.replicas[0].live else 0
        return sum(r.live for r in self.replicas)

    @property
    def idle(self) -> bool:
        return self.leases == 0 and not self.waiters

    @property
    def stopped(self) -> bool:
        """No runner runs, starts or stops."""
        return all(r.settled for r in self.replicas)

    def replica_idle(self, r: Replica) -> bool:
        return r.leases == 0 and not self.waiters

    def run_spec(self, r: Replica) -> ModelSpec:
        """The settings ``r``'s memory is counted by: those it was started with, once
        started."""
        return r.placed or self.spec

    def label(self, r: Replica) -> int | None:
        """``r``'s number in events: ``None`` for a model of one runner."""
        return r.index if self.spec.max_replicas > 1 else None

    def least_busy(self) -> Replica | None:
        """The ready runner with a free slot and the fewest requests in flight; of those, one
        of the ``replicas`` before one added under load (so that the added ones idle and stop
        when the load is gone), and the one unused longest (so that the ``replicas`` all stay
        warm)."""
        parallel = self.spec.parallel
        if len(self.replicas) == 1:  # most models: no choice to make
            (r,) = self.replicas
            return r if r.state is S.READY and r.leases < parallel else None
        free = [r for r in self.replicas if r.state is S.READY and r.leases < parallel]
        if not free:
            return None
        return min(free, key=lambda r: (r.leases, r.index >= self.spec.replicas, r.last_used))

    def grant(self, r: Replica, waiter: Waiter, now: float) -> Lease:
        """Gives ``waiter`` a slot on ``r`` (a ready runner with one free)."""
        if waiter.timer is not None:
            waiter.timer.cancel()
        r.disarm()
        keep_alive = waiter.keep_alive
        r.keep_alive = self.spec.keep_alive if isinstance(keep_alive, Unset) else keep_alive
        r.leases += 1
        r.last_used = now
        assert r.running is not None
        queued = now - waiter.enqueued_at
        # Time it waited while the model was not ready (for it, or for a load before it).
        load_wait = max(0.0, min(queued, r.loaded_at - waiter.enqueued_at))
        running = r.running
        lease = Lease(
            self.spec.name,
            running.base_url,
            running.headers,
            queued,
            r.generation,
            load_wait,
            r.index,
        )
        waiter.future.set_result(lease)
        return lease

    def fail(self, waiter: Waiter, error: ModelyardError) -> None:
        """``waiter`` gets ``error`` and leaves the queue."""
        if waiter.timer is not None:
            waiter.timer.cancel()
        with contextlib.suppress(ValueError):
            self.waiters.remove(waiter)
        if not waiter.future.done():
            waiter.future.set_exception(error)

    def queue_full(self) -> QueueFullError | None:
        """The 429 for the newest waiter when more wait than ``max_queue`` beyond the slots
        that are free, or will be once the model has loaded."""
        runners = max(1, self.live)
        free_slots = max(0, self.spec.parallel * runners - self.leases)
        if len(self.waiters) <= self.spec.max_queue + free_slots:
            return None
        return QueueFullError(
            f"Too many requests queued for model {self.spec.name!r} "
            f"({self.spec.max_queue} waiting, {self.leases} in flight); retry later",
            retry_after=max(1, math.ceil(len(self.waiters) / self.spec.parallel)),
        )

    def timed_out(self, waited: float) -> QueueTimeoutError:
        """The 503 for a request that waited ``waited`` seconds, past ``queue_timeout``."""
        return QueueTimeoutError(
            f"Timed out after {waited:.0f}s waiting for model {self.spec.name!r} "
            f"(state {self.state}, {self.leases} in flight, {len(self.waiters)} queued)",
            retry_after=max(1, math.ceil((self.spec.queue_timeout or 10) / 10)),
        )

    def backing_off(self, now: float) -> LoadFailedError:
        """The 503 for requests while its loads back off after failures (until
        ``retry_at``)."""
        return LoadFailedError(
            f"Model {self.spec.name!r} failed to load and is backing off for "
            f"{self.retry_at - now:.0f}s more. Last error: {self.last_error}",
            retry_after=max(1, math.ceil(self.retry_at - now)),
        )

    def runners(self) -> dict[int, RunningModel]:
        """Its runners that are ready or asleep, by number."""
        return {
            r.index: r.running
            for r in self.replicas
            if r.running is not None and r.state in (S.READY, S.SLEEPING)
        }

    def replica_of(self, lease: Lease) -> Replica | None:
        """The runner ``lease`` counts on; ``None`` once that runner has exited."""
        if lease.replica >= len(self.replicas):
            return None
        r = self.replicas[lease.replica]
        return r if r.generation == lease.generation else None

    def key(self, r: Replica) -> str:
        """How placement names a runner: the model's name, ``@N`` after the first."""
        return f"{self.spec.name}@{r.index}" if r.index else self.spec.name


@dataclass(frozen=True)
class ReplicaStatus:
    index: int
    state: ModelState
    in_flight: int
    loaded_since: float | None
    expires_at: float | None
    pid: int | None
    node: str = LOCAL


class Listed(NamedTuple):
    """A model as lists of the catalog show it: what ``ModelStatus`` says but the figures."""

    name: str
    spec: ModelSpec
    """The catalog's entry (a pending one first, as in ``ModelStatus``)."""
    state: ModelState
    removed: bool


@dataclass(frozen=True)
class ModelStatus:
    name: str
    spec: ModelSpec
    """The catalog's entry (for a loaded model whose settings changed: the new settings)."""
    removed: bool
    """Removed from the catalog and still finishing requests."""
    state: ModelState
    estimate: Footprint
    """Of one runner."""
    measured: Footprint | None
    """Of one runner."""
    queued: int
    in_flight: int
    parallel: int
    """Of one runner."""
    loaded_since: float | None
    """Wall-clock time (``time.time()``) the first runner running now became ready."""
    expires_at: float | None
    """Wall-clock time the keep-alive runs out; ``None`` while busy or when it never does."""
    pinned: bool
    last_error: str | None
    replicas: tuple[ReplicaStatus, ...] = ()
    """The runners not stopped, when the model may have several."""
    held: Footprint = field(default_factory=dict)
    """What its runners hold now, as the budget counts it (all of them; a sleeping one its
    memory asleep)."""
    held_on: Mapping[str, Footprint] = field(default_factory=dict)
    """``held``, per node."""
