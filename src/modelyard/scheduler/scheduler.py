"""Leases, queues, keep-alive, loading and eviction: all scheduling state lives here.

Everything runs on one event loop and every decision is made synchronously in ``_pump``, so
no locks are needed. Side effects (starting and stopping runners) go through the ``Runner``
seam; time goes through the injected ``Clock``; memory is accounted by the ``MemoryLedger``
(``budget.py``) and the eviction choice is the pure ``policy``. The file is long on purpose:
it is the one owner of the models' state, and splitting that state would bring back the
locks and the implied states this design avoids.

Contracts:
- ``acquire(model)`` returns a ``Lease`` once the model is ready and one of its ``parallel``
  slots is free. While any lease on a model is held, the model is never evicted.
- Requests for one model wait in a queue of at most ``max_queue`` beyond the slots that are
  free or will be once it has loaded, first in, first out per client and taking turns
  between clients (``queue.FairQueue``); one more raises ``QueueFullError`` (429);
  waiting longer than ``queue_timeout`` raises ``QueueTimeoutError`` (503). A waiter that is
  cancelled (its client left) is removed and starts nothing.
- Concurrent requests for a cold model share one load. A model larger than the whole budget
  raises ``DoesNotFitError`` (507) at once. A load that fails fails its waiters with
  ``LoadFailedError`` (503) carrying the runner's log tail; repeated failures back off.
- When the last lease is released the model's keep-alive starts (the last request's
  ``keep_alive`` if it gave one, else the catalog's): ``0`` unloads now, ``None`` never.
- A runner that exits on its own moves its model to ``stopped``; leases taken before stay
  valid objects but no longer count, and waiting requests start it again (after a delay
  that grows while it keeps crashing before it serves a request: ``backoff``). A request
  whose lease turned out to point at a dead runner (``runner_unreachable``) waits for the
  restart like any request to a cold model.
- ``max_loaded`` caps how many models are resident at once (in all, and per kind); a cap
  is decided like memory, by the same policy (see ``_place``).
- Memory is measured on a timer (``measure_interval``), off the request path and never by
  a query: each runner's peak counts from then on. When the resident models together
  exceed the budget (an engine grew past its estimate), idle models are evicted, and new
  loads wait until there is room.
- A model may run several runners (``replicas``; up to ``max_replicas`` under load), each
  with its own state, slots, keep-alive, crashes and memory; the model's queue is one.
  ``replicas`` start together; one more starts while the oldest request has waited
  ``scale_up_wait`` with every runner busy and it fits in free memory (evicting nothing);
  each stops after its keep-alive. A request goes to the ready runner with the fewest in
  flight. A runner's crash voids only its own leases.
- A runner whose engine can sleep (``sleep_level``, vLLM's sleep mode) is put to sleep
  instead of stopped when it idles out or only GPU memory is short: it keeps its process,
  counts by what it holds asleep, and the next request wakes it (a load, as far as memory
  and the queue are concerned). It is stopped when RAM or a cap on loaded models is short.
- ``update_catalog`` swaps the catalog while serving: new models can be requested at once;
  a removed model takes no new requests, finishes the ones it has (queued included), then
  unloads and is forgotten; a model whose settings changed keeps running as it is and takes
  the new settings at its next load (at once when it is not loaded).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from typing import Final

from modelyard.catalog.catalog import Catalog, CatalogChange
from modelyard.catalog.spec import Footprint, ModelSpec
from modelyard.clock import Clock, LoopClock, Timer
from modelyard.errors import (
    DoesNotFitError,
    LoadFailedError,
    ModelNotFoundError,
    ModelyardError,
    QueueFullError,
    QueueTimeoutError,
)
from modelyard.quantity import format_size
from modelyard.runners.base import Runner, RunningModel, Sleeper
from modelyard.scheduler.budget import MemoryLedger
from modelyard.scheduler.event import (
    DECISIONS,
    CatalogReloaded,
    Event,
    Evicted,
    EvictionReason,
    KeepAliveExpired,
    LeaseAcquired,
    LeaseReleased,
    LoadFailed,
    LoadFinished,
    LoadRequested,
    MemoryPressure,
    RefusalReason,
    Refused,
    Restarting,
    RunnerExited,
    StateChanged,
    exit_name,
)
from modelyard.scheduler.journal import Journal
from modelyard.scheduler.placement import LOCAL, Evict, Holder, Need, Snapshot, Wait, plan, relieve
from modelyard.scheduler.queue import FairQueue
from modelyard.scheduler.state import RESIDENT, ModelState, check_transition
from modelyard.scheduler.state import ModelState as S

log = logging.getLogger(__name__)


class Unset:
    pass


UNSET: Final = Unset()
"""``keep_alive`` not given by the request: use the catalog's."""

_BACKOFF_MAX = 60.0
_MODELS = "models"
"""The pseudo-device of the caps on loaded models."""


def backoff(failures: int) -> float:
    """Seconds to refuse loads after ``failures`` failures in a row: 0, 1, 2, 4 … 60."""
    return 0.0 if failures <= 1 else min(2.0 ** (failures - 2), _BACKOFF_MAX)


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
class _Waiter:
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
class _Replica:
    """One runner of a model and its lifecycle (a model has one unless ``max_replicas``)."""

    index: int
    state: ModelState = ModelState.STOPPED
    running: RunningModel | None = None
    generation: int = 0
    """Unique to one run of a runner (0 while none runs): a lease counts only for it."""
    leases: int = 0
    keep_alive: float | None = None
    loaded_at: float = 0.0
    load_started: float = 0.0
    last_used: float = 0.0
    expires_at: float | None = None
    expiry: Timer | None = None
    unload_when_idle: tuple[EvictionReason, str] | None = None
    """Unload once idle, and why."""
    crashes: int = 0
    """Runner exits in a row without a request served in between."""
    restart_at: float = 0.0
    """Waiting requests start the runner again no sooner than this."""
    task: asyncio.Task[None] | None = None
    watcher: asyncio.Task[None] | None = None
    placed: ModelSpec | None = None
    """The settings its runner was started with (the layers of ``gpu_layers = "auto"``, the
    replica's number); ``None`` while stopped."""
    asleep: Footprint | None = None
    """What it holds while it sleeps, measured (``None`` until it has gone to sleep)."""
    slept_at: float = 0.0
    node: str = LOCAL
    """Where its runner runs (or last ran)."""

    @property
    def live(self) -> bool:
        """Serving, or about to: it takes requests."""
        return self.state in (ModelState.LOADING, ModelState.READY)

    def detach(self) -> RunningModel | None:
        """Forgets its runner (and stops watching it) to stop it: the runner, if any."""
        running, self.running = self.running, None
        if self.watcher is not None:
            self.watcher.cancel()
            self.watcher = None
        return running

    def no_expiry(self) -> None:
        """Its keep-alive is not running (stopped if it was)."""
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        self.expires_at = None


@dataclass(eq=False)
class _Model:
    spec: ModelSpec
    replicas: list[_Replica] = field(default_factory=list)
    waiters: FairQueue[_Waiter] = field(default_factory=FairQueue)
    failures: int = 0
    """Loads that failed in a row: waiting requests fail fast until ``retry_at``."""
    retry_at: float = 0.0
    over_estimate: bool = False
    """Its measured memory went past its estimate (reported once)."""
    last_error: str | None = None
    pending: ModelSpec | None = None
    """New settings from the catalog, applied when every runner of the model has stopped."""
    removed: bool = False
    """Gone from the catalog: finishing its requests, then forgotten."""

    def __post_init__(self) -> None:
        self.size_replicas()

    def size_replicas(self) -> None:
        """One replica slot per runner the spec allows (called while none runs)."""
        if len(self.replicas) != self.spec.max_replicas:
            self.replicas = [_Replica(i) for i in range(self.spec.max_replicas)]

    @property
    def state(self) -> ModelState:
        """The model's state, from its runners': ready if one is, else loading if one is, …"""
        states = {r.state for r in self.replicas}
        for state in (S.READY, S.LOADING, S.UNLOADING, S.SLEEPING):
            if state in states:
                return state
        return ModelState.FAILED if ModelState.FAILED in states else ModelState.STOPPED

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
        return all(
            r.state in (ModelState.STOPPED, ModelState.FAILED) and r.task is None
            for r in self.replicas
        )

    def replica_idle(self, r: _Replica) -> bool:
        return r.leases == 0 and not self.waiters

    def run_spec(self, r: _Replica) -> ModelSpec:
        """The settings ``r``'s memory is counted by: those it was started with, once
        started."""
        return r.placed or self.spec

    def label(self, r: _Replica) -> int | None:
        """``r``'s number in events: ``None`` for a model of one runner."""
        return r.index if self.spec.max_replicas > 1 else None


@dataclass(frozen=True)
class ReplicaStatus:
    index: int
    state: ModelState
    in_flight: int
    loaded_since: float | None
    expires_at: float | None
    pid: int | None


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


class Scheduler:
    """Decides which models are loaded and who waits; see the module docstring."""

    def __init__(
        self,
        catalog: Catalog,
        runners: Mapping[str, Runner],
        budget: Footprint,
        *,
        clock: Clock | None = None,
        min_residency: float = 0.0,
        stop_grace: float = 5.0,
        measured: MutableMapping[str, Footprint] | None = None,
        measure_interval: float = 0.0,
        journal: Journal | None = None,
        max_loaded: Mapping[str, int] | None = None,
    ) -> None:
        self._catalog = catalog
        self._runners = runners
        self._clock: Clock = clock or LoopClock()
        self._min_residency = min_residency
        self._stop_grace = stop_grace
        self.ledger = MemoryLedger(budget, runners, measured)
        self._models: dict[str, _Model] = {spec.name: _Model(spec) for spec in catalog}
        self._seq = 0
        self._generations = itertools.count(1)
        self._listeners: list[Callable[[Event], None]] = []
        self.journal = journal or Journal()
        self._max_loaded = {
            _MODELS if kind == "all" else f"{_MODELS}:{kind}": n
            for kind, n in (max_loaded or {}).items()
        }
        self._pump_timer: Timer | None = None
        self._restart_timer: Timer | None = None
        self._restart_when = 0.0
        self._measure_interval = measure_interval
        self._measure_timer: Timer | None = None
        self._measuring: asyncio.Task[None] | None = None
        self._pressure = False
        self._closed = False

    # ---- public API -------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        self._listeners.append(listener)

    def spec(self, name: str) -> ModelSpec:
        """The catalog entry for a name or alias (``ModelNotFoundError`` when unknown)."""
        return self._catalog.get(name)

    def state(self, name: str) -> ModelState:
        return self._models[self._catalog.get(name).name].state

    async def acquire(
        self,
        name: str,
        keep_alive: float | Unset | None = UNSET,
        *,
        request: str = "",
        client: str = "",
        weight: float = 1.0,
    ) -> Lease:
        """Waits for a slot on ``name`` (loading it, evicting idle models as needed).

        ``request`` names who asks (a request id) in the event log; ``client`` whose request
        it is, and ``weight`` its share, for the turns in the queue."""
        m = self._models[self._catalog.get(name).name]
        now = self._clock.now()
        first = self._replica_spec(m, m.replicas[0])
        try:
            self.ledger.check_fits(first)
        except DoesNotFitError as exc:
            raise self._refuse(
                m,
                "too_big",
                exc,
                needed=self.ledger.footprint(first),
                budget=dict(self.ledger.budget),
                in_use=self.reserved(),
            ) from None
        self._seq += 1
        future = asyncio.get_running_loop().create_future()
        waiter = _Waiter(self._seq, future, now, keep_alive, request, client, weight)
        m.waiters.append(waiter)
        if len(m.waiters) == 1 and m.state not in (ModelState.READY, ModelState.LOADING):
            estimate = dict(self.ledger.estimate(m.spec))
            self._emit(LoadRequested(m.spec.name, now, request or "a request", estimate))
        self._pump()
        if not waiter.future.done():
            # Slots that are free, or will be once the model has loaded, take waiters too.
            runners = max(1, m.live)
            free_slots = max(0, m.spec.parallel * runners - m.leases)
            if len(m.waiters) > m.spec.max_queue + free_slots:
                m.waiters.remove(waiter)
                raise self._refuse(
                    m,
                    "queue_full",
                    QueueFullError(
                        f"Too many requests queued for model {m.spec.name!r} "
                        f"({m.spec.max_queue} waiting, {m.leases} in flight); retry later",
                        retry_after=max(1, math.ceil(len(m.waiters) / m.spec.parallel)),
                    ),
                )
            if m.spec.queue_timeout is not None:
                waiter.timer = self._clock.call_at(
                    now + m.spec.queue_timeout, lambda: self._queue_timeout(m, waiter)
                )
        try:
            return await waiter.future
        except asyncio.CancelledError:
            self._abandon(m, waiter)
            raise

    def release(self, lease: Lease, *, served: bool = False) -> None:
        """Returns a lease; safe to call twice. ``served``: the runner answered the request
        in full (so it is not crashing over and over)."""
        if lease.released:
            return
        lease.released = True
        found = self._replica_of(lease)
        if found is None:
            return  # the runner it was for has exited since (or the model is gone)
        m, r = found
        if served:
            r.crashes = 0
        r.leases -= 1
        r.last_used = self._clock.now()
        self._emit(LeaseReleased(m.spec.name, r.last_used, replica=m.label(r)))
        if m.replica_idle(r):
            self._start_keep_alive(m, r)
        self._pump()

    async def load(
        self,
        name: str,
        keep_alive: float | Unset | None = UNSET,
        *,
        request: str = "POST /api/load",
    ) -> None:
        """Loads ``name`` (as a request would) and returns once it is ready."""
        self.release(await self.acquire(name, keep_alive, request=request))

    def pin(self, name: str, pinned: bool) -> None:
        """Pins ``name`` (never evicted, no keep-alive expiry) or unpins it, from now until
        the server restarts or the catalog changes its entry."""
        m = self._models[self._catalog.get(name).name]
        m.spec = replace(m.spec, pinned=pinned)
        if m.pending is not None:
            m.pending = replace(m.pending, pinned=pinned)
        for r in m.replicas:
            if pinned:
                r.no_expiry()
            elif m.replica_idle(r) and r.state is ModelState.READY:
                self._start_keep_alive(m, r)
        self._pump()  # a model waiting for memory may now evict it

    async def unload(self, name: str) -> None:
        """Unloads ``name`` now if idle, else once its in-flight requests are done."""
        m = self._models[self._catalog.get(name).name]
        for r in m.replicas:
            if r.state is ModelState.FAILED:
                self._set_state(m, r, ModelState.STOPPED, "unload requested")
            elif self._stoppable(m, r):
                self._unload(m, r, "manual", "unload requested")
            elif r.live or r.state is ModelState.SLEEPING:
                r.unload_when_idle = ("manual", "unload requested")
        tasks = [r.task for r in m.replicas if r.task is not None]
        if tasks:
            await asyncio.gather(*(asyncio.shield(task) for task in tasks))

    def running(self, name: str) -> RunningModel | None:
        """A runner of the model called ``name`` (its canonical name), if one runs (ready or
        asleep): its first."""
        return next(iter(self.runners(name).values()), None)

    def runners(self, name: str) -> dict[int, RunningModel]:
        """The runners of the model called ``name`` (its canonical name) that are ready or
        asleep, by number."""
        m = self._models.get(name)
        if m is None:
            return {}
        return {
            r.index: r.running
            for r in m.replicas
            if r.running is not None and r.state in (S.READY, S.SLEEPING)
        }

    def estimate(self, name: str) -> Footprint:
        """The memory loading ``name`` will take (``LoadFailedError`` if it cannot be read)."""
        return self.ledger.estimate(self._catalog.get(name))

    def measured(self, name: str) -> Footprint | None:
        """The most the model has been seen to use with its current settings."""
        return self.ledger.measured(self._catalog.get(name))

    async def runner_unreachable(self, lease: Lease, grace: float = 5.0) -> bool:
        """The runner of ``lease`` refused or dropped a request before taking it. Waits (up
        to ``grace`` seconds: a killed runner's exit is seen late on a busy machine) for its
        process to exit and handles the exit at once, so that the request can wait for the
        restart; ``False`` if it is still running (then the request fails)."""
        found = self._replica_of(lease)
        if found is None or found[1].running is None:
            return True  # already known to be gone
        m, r = found
        running = r.running
        assert running is not None
        try:
            code = await asyncio.wait_for(asyncio.shield(running.wait()), grace)
        except TimeoutError:
            return False
        self._exited(m, r, running, code)
        return True

    async def prepare(self, specs: Iterable[ModelSpec] | None = None) -> None:
        """Reads the estimates of ``specs`` (the whole catalog by default) in a thread."""
        await self.ledger.prepare(self._catalog if specs is None else specs)

    def start_measuring(self) -> None:
        """Measures every running model each ``measure_interval`` from now on."""
        if self._measure_interval > 0 and self._measure_timer is None and not self._closed:
            self._measure_timer = self._clock.call_at(
                self._clock.now() + self._measure_interval, self._measure_tick
            )

    async def measure(self) -> None:
        """Measures every running model now (in a thread), then acts on what it found."""
        targets = [
            (m, r, r.running, r.state)
            for m in self._models.values()
            for r in m.replicas
            if r.running is not None and (r.state is S.READY or self._asleep(r))
        ]

        def sample() -> list[Footprint]:
            return [running.footprint() for _, _, running, _ in targets]

        footprints = await asyncio.to_thread(sample)
        for (m, r, running, state), footprint in zip(targets, footprints, strict=True):
            if r.running is not running or r.state is not state:
                continue
            if state is S.READY:
                self._record(m, r, footprint)
            elif self._asleep(r):
                r.asleep = footprint
        await asyncio.to_thread(self.ledger.flush)
        self._check_pressure()

    def update_catalog(self, catalog: Catalog) -> CatalogChange:
        """Serves ``catalog`` from now on; see the module docstring."""
        self._catalog = catalog
        added, removed, changed = [], [], []
        for spec in catalog:
            m = self._models.get(spec.name)
            if m is None:
                self._models[spec.name] = _Model(spec)
                added.append(spec.name)
                continue
            if m.removed:
                m.removed = False
                for r in m.replicas:
                    r.unload_when_idle = None
            if spec == (m.pending or m.spec):
                continue
            changed.append(spec.name)
            if spec == m.spec:
                m.pending = None  # changed back before it took effect
            elif m.stopped:
                self._respec(m, spec)
            else:
                m.pending = spec
        names = {spec.name for spec in catalog}
        for name, m in list(self._models.items()):
            if name not in names and not m.removed:
                removed.append(name)
                self._retire(m)
        self._pump()
        if added or removed or changed:
            now = self._clock.now()
            self._emit(CatalogReloaded("", now, tuple(added), tuple(removed), tuple(changed)))
        return CatalogChange(added, removed, changed)

    def status(self) -> list[ModelStatus]:
        """Every model in the catalog, with the memory last measured for loaded ones."""
        offset = time.time() - self._clock.now()
        result = []
        for m in self._models.values():
            ready = [r for r in m.replicas if r.state is ModelState.READY]
            expiring = [r.expires_at for r in ready if r.expires_at is not None]
            replicas = tuple(
                ReplicaStatus(
                    index=r.index,
                    state=r.state,
                    in_flight=r.leases,
                    loaded_since=r.loaded_at + offset if r.state is ModelState.READY else None,
                    expires_at=(
                        r.expires_at + offset
                        if r.expires_at is not None and r.state is ModelState.READY
                        else None
                    ),
                    pid=getattr(r.running, "pid", None),
                )
                for r in m.replicas
                if r.state is not ModelState.STOPPED
            )
            first = ready[0] if ready else m.replicas[0]
            result.append(
                ModelStatus(
                    name=m.spec.name,
                    spec=m.pending or m.spec,
                    removed=m.removed,
                    state=m.state,
                    estimate=self.ledger.estimate_or_empty(m.run_spec(first)),
                    measured=self.ledger.measured(m.run_spec(first)),
                    queued=len(m.waiters),
                    in_flight=m.leases,
                    parallel=m.spec.parallel,
                    loaded_since=min(r.loaded_at for r in ready) + offset if ready else None,
                    expires_at=(
                        max(expiring) + offset
                        if ready and m.idle and len(expiring) == len(ready)
                        else None
                    ),
                    pinned=m.spec.pinned,
                    last_error=m.last_error,
                    replicas=replicas if m.spec.max_replicas > 1 else (),
                    held=_sum(self._held(m, r) for r in m.replicas if r.state in RESIDENT),
                )
            )
        return result

    def reserved(self) -> dict[str, int]:
        """Memory held by resident models, per device."""
        return _sum(
            self._held(m, r)
            for m in self._models.values()
            for r in m.replicas
            if r.state in RESIDENT
        )

    async def close(self, grace: float | None = None) -> None:
        """Stops every runner (each gets ``grace`` seconds, by default ``stop_grace``, before
        SIGKILL); waiting requests fail."""
        grace = self._stop_grace if grace is None else grace
        self._closed = True
        for timer in (self._pump_timer, self._restart_timer, self._measure_timer):
            if timer is not None:
                timer.cancel()
        if self._measuring is not None:
            self._measuring.cancel()
        replicas = [r for m in self._models.values() for r in m.replicas]
        for m in self._models.values():
            for waiter in list(m.waiters):
                self._fail(m, waiter, LoadFailedError("the server is shutting down"))
        for r in replicas:
            r.no_expiry()
        tasks = [r.task for r in replicas if r.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stops = []
        for r in replicas:
            if r.watcher is not None:
                r.watcher.cancel()
            if r.running is not None:
                stops.append(r.running.stop(grace))
                r.running = None
        await asyncio.gather(*stops, return_exceptions=True)
        self.ledger.flush()

    # ---- the decision ------------------------------------------------------------------------

    def _pump(self) -> None:
        """Makes every decision that can be made now, in this order:

        1. Grant waiters of ready models, oldest first, each to the model's ready runner with
           the fewest requests in flight, up to ``parallel`` on each.
        2. Consider models with waiters in order of their oldest waiter (memory is handed out
           first come, first served), starting runners:
           - a model with no runner (cold): fail fast while it backs off after failed loads;
             skip it (its waiters wait) until a crashed runner's restart delay is over;
             load it if it fits in free memory; if it will fit once models already unloading
             are gone, wait; else evict idle models chosen by the policy and wait for them;
             if the policy finds none, wait. The first cold model that has to wait stops the
             pass, so a later request cannot take the memory it waits for.
           - a model with fewer runners than ``replicas``: start one more the same way,
             without stopping the pass;
           - a model below ``max_replicas`` whose oldest request has waited ``scale_up_wait``:
             start one more if it fits in free memory as it is (evicting nothing).
        """
        if self._closed:
            return
        now = self._clock.now()
        for m in self._models.values():
            while m.waiters:
                r = self._least_busy(m)
                if r is None:
                    break
                waiter = m.waiters.popleft()
                # Cancelled, and its task has not yet run to forget it: skip it.
                if not waiter.future.done():
                    self._grant(m, r, waiter, now)

        # Models whose requests wait and that may start a runner (a busy model of one
        # running runner, the common case under load, is passed over at once).
        wanting = [m for m in self._models.values() if m.waiters and m.live < m.spec.max_replicas]
        wanting.sort(key=lambda m: m.waiters.oldest().seq)
        for m in wanting:
            live = m.live
            cold = live == 0 and m.state is not ModelState.UNLOADING
            if m.retry_at > now:
                if cold:
                    self._back_off(m, now)
                continue
            scale_up = live >= m.spec.replicas
            if scale_up and (live >= m.spec.max_replicas or not self._scale_up_due(m, now)):
                continue
            stopped = [r for r in m.replicas if r.state in (ModelState.STOPPED, ModelState.FAILED)]
            due = [r for r in m.replicas if self._asleep(r)]  # waking is the faster start
            due += [r for r in stopped if r.task is None and r.restart_at <= now]
            if not due:
                if stopped:
                    self._pump_at(min(r.restart_at for r in stopped))
                continue
            if scale_up:
                self._place(m, due[0], now, evict=False)
                continue
            placed = 0
            for r in due[: m.spec.replicas - live]:
                if not self._place(m, r, now):
                    break
                placed += 1
            if cold and not placed:
                break

    def _least_busy(self, m: _Model) -> _Replica | None:
        """The ready runner of ``m`` with a free slot and the fewest requests in flight; of
        those, one of the ``replicas`` before one added under load (so that the added ones
        idle and stop when the load is gone), and the one unused longest (so that the
        ``replicas`` all stay warm)."""
        parallel = m.spec.parallel
        if len(m.replicas) == 1:  # most models: no choice to make
            (r,) = m.replicas
            return r if r.state is S.READY and r.leases < parallel else None
        free = [r for r in m.replicas if r.state is S.READY and r.leases < parallel]
        if not free:
            return None
        return min(free, key=lambda r: (r.leases, r.index >= m.spec.replicas, r.last_used))

    def _scale_up_due(self, m: _Model, now: float) -> bool:
        """``m``'s oldest request has waited ``scale_up_wait`` with no runner starting (else
        ``_pump`` runs again when it will have)."""
        if any(r.state is ModelState.LOADING for r in m.replicas):
            return False
        due = m.waiters.oldest().enqueued_at + m.spec.scale_up_wait
        if due > now:
            self._pump_at(due)
            return False
        return True

    def _back_off(self, m: _Model, now: float) -> None:
        error = LoadFailedError(
            f"Model {m.spec.name!r} failed to load and is backing off for "
            f"{m.retry_at - now:.0f}s more. Last error: {m.last_error}",
            retry_after=max(1, math.ceil(m.retry_at - now)),
        )
        self._refuse(m, "backing_off", error)
        for waiter in list(m.waiters):
            self._fail(m, waiter, error)

    def _place(self, m: _Model, r: _Replica, now: float, *, evict: bool = True) -> bool:
        """Starts (or wakes) ``r`` where ``placement.plan`` says, or evicts for it; ``False``
        when it has to wait. ``evict=False``: only in memory free now (a scale-up)."""
        waking = r.state is S.SLEEPING
        spec = m.run_spec(r) if waking else self._replica_spec(m, r)
        if waking:  # it takes what it holds awake beyond what it holds asleep
            asleep = self._held(m, r)
            awake = self.ledger.footprint(spec)
            wake = {d: max(0, n - asleep.get(d, 0)) for d, n in awake.items()}
            need = Need(m.spec.name, wake, node=r.node)
        else:
            first = not any(y.state in RESIDENT for y in m.replicas)
            units = self._slots(spec) if first else {}
            if spec.gpu_layers == "auto":
                auto = spec

                def layers(n: int) -> Footprint:
                    return self.ledger.estimate(replace(auto, gpu_layers=n))

                need = Need(m.spec.name, {}, units, layers, evict=evict)
            else:
                need = Need(m.spec.name, self.ledger.estimate(spec), units, evict=evict)
        decision = plan(self._snapshot(), need, now)
        if isinstance(decision, Evict):
            for key in decision.victims:
                victim, replica = self._by_key(key)
                self._evict(victim, replica, decision.short, decision.reason, for_model=m.spec.name)
            return False
        if isinstance(decision, Wait):
            if decision.until is not None:
                if self._pump_timer is not None:
                    self._pump_timer.cancel()
                self._pump_timer = self._clock.call_at(decision.until, self._pump)
            return False
        if not waking:
            r.placed = spec
            if decision.layers is not None:
                r.placed = replace(spec, gpu_layers=decision.layers)
            r.node = decision.node
        self._load(m, r)
        return True

    def _snapshot(self) -> Snapshot:
        """Every runner holding memory, the budget and the caps, as placement sees them."""
        holders = []
        for m in self._models.values():
            units = self._slots(m.spec)
            for r in m.replicas:
                if r.state not in RESIDENT:
                    continue
                asleep = self._asleep(r)
                freeing: Footprint = {}
                if r.state is S.UNLOADING:
                    freeing = self.ledger.footprint(m.run_spec(r))
                elif r.state is S.SLEEPING and not asleep:  # going to sleep: its GPU part
                    full = self.ledger.footprint(m.run_spec(r))
                    freeing = {d: n for d, n in full.items() if d != "ram"}
                holder = Holder(
                    key=self._key(m, r),
                    model=m.spec.name,
                    node=r.node,
                    held=self._held(m, r),
                    freeing=freeing,
                    stopping=r.state is S.UNLOADING,
                    evictable=r.state is S.READY or asleep,
                    busy=r.leases > 0 or bool(m.waiters),
                    pinned=m.spec.pinned,
                    # A sleeping runner's keep-alive ran out when it fell asleep.
                    expires_at=r.slept_at if asleep else r.expires_at,
                    last_used=r.last_used,
                    loaded_at=r.loaded_at,
                    units=units,
                )
                holders.append(holder)
        budgets = {LOCAL: self.ledger.budget}
        return Snapshot(budgets, holders, self._max_loaded, self._min_residency)

    @staticmethod
    def _replica_spec(m: _Model, r: _Replica) -> ModelSpec:
        """The settings ``r`` starts with: its number, and its share of the model's GPUs
        when each runner gets its own (``gpus_per_replica``)."""
        spec = m.spec
        if not r.index and not spec.gpus_per_replica:
            return spec
        gpus = spec.gpus
        if spec.gpus_per_replica:
            share = spec.gpus_per_replica
            gpus = gpus[r.index * share : (r.index + 1) * share]
        return replace(spec, replica=r.index, gpus=gpus)

    def _slots(self, spec: ModelSpec) -> dict[str, int]:
        """The units of the ``max_loaded`` caps a model takes: one of ``models`` and one of
        its kind's (``models:chat``), for the caps there are."""
        keys = (_MODELS, f"{_MODELS}:{spec.kind}")
        return {key: 1 for key in keys if key in self._max_loaded}

    def _pump_at(self, when: float) -> None:
        """Runs ``_pump`` again at ``when`` (the earliest of the times asked for)."""
        if self._restart_timer is not None:
            if self._restart_when <= when:
                return
            self._restart_timer.cancel()
        self._restart_when = when

        def fire() -> None:
            self._restart_timer = None
            self._pump()

        self._restart_timer = self._clock.call_at(when, fire)

    # ---- effects -------------------------------------------------------------------------------

    def _grant(self, m: _Model, r: _Replica, waiter: _Waiter, now: float) -> None:
        if waiter.timer is not None:
            waiter.timer.cancel()
        r.no_expiry()
        r.keep_alive = (
            m.spec.keep_alive if isinstance(waiter.keep_alive, Unset) else waiter.keep_alive
        )
        r.leases += 1
        r.last_used = now
        assert r.running is not None
        queued = now - waiter.enqueued_at
        # Time it waited while the model was not ready (for it, or for a load before it).
        load_wait = max(0.0, min(queued, r.loaded_at - waiter.enqueued_at))
        lease = Lease(
            m.spec.name,
            r.running.base_url,
            r.running.headers,
            queued,
            r.generation,
            load_wait,
            r.index,
        )
        waiter.future.set_result(lease)
        self._emit(
            LeaseAcquired(m.spec.name, now, queued=queued, load_wait=load_wait, replica=m.label(r))
        )

    def _fail(self, m: _Model, waiter: _Waiter, error: ModelyardError) -> None:
        if waiter.timer is not None:
            waiter.timer.cancel()
        with contextlib.suppress(ValueError):
            m.waiters.remove(waiter)
        if not waiter.future.done():
            waiter.future.set_exception(error)

    def _abandon(self, m: _Model, waiter: _Waiter) -> None:
        """The waiting request went away (client disconnect): forget it, or return its lease."""
        if waiter.timer is not None:
            waiter.timer.cancel()
        if waiter.future.done() and not waiter.future.cancelled():
            if waiter.future.exception() is None:
                self.release(waiter.future.result())
            return
        with contextlib.suppress(ValueError):
            m.waiters.remove(waiter)
        for r in m.replicas:
            if m.replica_idle(r) and r.state is ModelState.READY and r.expires_at is None:
                self._start_keep_alive(m, r)
        self._pump()

    def _queue_timeout(self, m: _Model, waiter: _Waiter) -> None:
        if waiter.future.done():
            return
        waited = self._clock.now() - waiter.enqueued_at
        error = QueueTimeoutError(
            f"Timed out after {waited:.0f}s waiting for model {m.spec.name!r} "
            f"(state {m.state}, {m.leases} in flight, {len(m.waiters)} queued)",
            retry_after=max(1, math.ceil((m.spec.queue_timeout or 10) / 10)),
        )
        self._fail(m, waiter, self._refuse(m, "queue_timeout", error))
        self._pump()

    def _start_keep_alive(self, m: _Model, r: _Replica) -> None:
        if r.state is ModelState.READY and r.unload_when_idle is not None:
            self._unload(m, r, *r.unload_when_idle)
            return
        if r.state is ModelState.READY and r.keep_alive == 0:
            self._idle_out(m, r, "keep_alive 0")
            return
        if m.spec.pinned or r.keep_alive is None or r.state is not ModelState.READY:
            r.expires_at = None
            return
        r.expires_at = self._clock.now() + r.keep_alive
        if r.expiry is not None:
            r.expiry.cancel()
        r.expiry = self._clock.call_at(r.expires_at, lambda: self._expire(m, r))

    def _expire(self, m: _Model, r: _Replica) -> None:
        r.expiry = None
        if r.state is ModelState.READY and m.replica_idle(r) and r.expires_at is not None:
            self._emit(KeepAliveExpired(m.spec.name, self._clock.now(), replica=m.label(r)))
            self._idle_out(m, r, "keep-alive expired")

    def _load(self, m: _Model, r: _Replica) -> None:
        r.load_started = self._clock.now()
        self._set_state(m, r, ModelState.LOADING)
        name = m.run_spec(r).runner_name
        r.task = asyncio.create_task(self._run_load(m, r), name=f"load {name}")

    async def _run_load(self, m: _Model, r: _Replica) -> None:
        spec = m.run_spec(r)
        runner = self._runners[spec.engine]
        try:
            if r.running is not None:  # asleep
                running = r.running
                assert isinstance(running, Sleeper)
                await running.wake()
                if r.running is not running or r.state is not S.LOADING:
                    r.task = None
                    return  # stopped while waking
            else:
                running = await runner.start(spec)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            m.failures += 1
            m.retry_at = self._clock.now() + backoff(m.failures)
            m.last_error = exc.message if isinstance(exc, ModelyardError) else repr(exc)
            if not isinstance(exc, ModelyardError):
                log.exception("loading %s failed", spec.runner_name)
            now = self._clock.now()
            event = LoadFailed(
                m.spec.name,
                now,
                now - r.load_started,
                m.last_error,
                m.retry_at - now,
                replica=m.label(r),
            )
            failed = self._emit(event)
            if (asleep := r.detach()) is not None:  # it did not wake: stop it
                with contextlib.suppress(Exception):
                    await asleep.stop(self._stop_grace)
            r.task = None
            r.asleep = None
            self._set_state(m, r, ModelState.FAILED, m.last_error)
            if not any(y.live for y in m.replicas):
                error = LoadFailedError(f"Model {m.spec.name!r} failed to load: {m.last_error}")
                error.add_event(failed)
                for waiter in list(m.waiters):
                    self._fail(m, waiter, error)
            self._pump()
            return
        r.task = None
        woken = r.running is running
        r.running = running
        r.asleep = None
        r.generation = next(self._generations)
        m.failures = 0
        m.last_error = None
        r.loaded_at = r.last_used = self._clock.now()
        # One process or two just started: measuring them takes well under a millisecond.
        measured = running.footprint()
        self._record(m, r, measured)
        self._emit(
            LoadFinished(
                m.spec.name,
                r.loaded_at,
                r.loaded_at - r.load_started,
                dict(measured),
                replica=m.label(r),
            )
        )
        self._set_state(m, r, ModelState.READY, "woken" if woken else "")
        if not woken:
            r.watcher = asyncio.create_task(
                self._watch(m, r, running), name=f"watch {spec.runner_name}"
            )
        if m.replica_idle(r):
            r.keep_alive = m.spec.keep_alive
            self._start_keep_alive(m, r)
        self._pump()

    async def _watch(self, m: _Model, r: _Replica, running: RunningModel) -> None:
        self._exited(m, r, running, await running.wait())

    def _exited(self, m: _Model, r: _Replica, running: RunningModel, code: int) -> None:
        """``running`` exited with ``code``; a no-op unless it was ``r``'s ready runner."""
        if r.running is not running or r.state not in (S.READY, S.SLEEPING):
            return  # stopped by us, or handled already
        if r.watcher is not None and r.watcher is not asyncio.current_task():
            r.watcher.cancel()
        r.watcher = None
        tail = running.log_tail()
        now = self._clock.now()
        name = m.run_spec(r).runner_name
        freed = dict(self._held(m, r))
        r.running = None
        r.asleep = None
        r.generation = 0
        r.leases = 0
        r.crashes += 1
        r.restart_at = now + backoff(r.crashes)
        m.last_error = f"runner exited unexpectedly with code {code}: {tail[-500:]}"
        if r.crashes <= 2:
            log.error("runner for %s exited with code %s:\n%s", name, code, tail)
        else:
            log.error(
                "runner for %s exited with code %s again (%d times without serving a request); "
                "restarting in %.0fs",
                name,
                code,
                r.crashes,
                r.restart_at - now,
            )
        r.no_expiry()
        label = m.label(r)
        self._emit(RunnerExited(m.spec.name, now, code=code, log_tail=tail, replica=label))
        self._emit(
            Evicted(
                m.spec.name,
                now,
                "crash",
                f"runner exited with {exit_name(code)}",
                freed=freed,
                replica=label,
            )
        )
        self._emit(Restarting(m.spec.name, now, r.restart_at - now, r.crashes, replica=label))
        self._set_state(m, r, ModelState.STOPPED, f"runner exited with {exit_name(code)}")
        self._pump()

    def _unload(
        self,
        m: _Model,
        r: _Replica,
        reason: EvictionReason,
        detail: str = "",
        *,
        for_model: str = "",
    ) -> None:
        r.no_expiry()
        r.unload_when_idle = None
        freed = self._held(m, r)
        now = self._clock.now()
        self._emit(
            Evicted(m.spec.name, now, reason, detail, for_model, dict(freed), replica=m.label(r))
        )
        text = detail or (f"evicted to make room for {for_model}" if for_model else reason)
        self._set_state(m, r, ModelState.UNLOADING, text)
        name = m.run_spec(r).runner_name
        r.task = asyncio.create_task(self._run_unload(m, r), name=f"unload {name}")

    async def _run_unload(self, m: _Model, r: _Replica) -> None:
        running = r.detach()
        if running is not None:
            try:
                await running.stop(self._stop_grace)
                code = await asyncio.wait_for(running.wait(), 1.0)
                self._emit(
                    RunnerExited(
                        m.spec.name,
                        self._clock.now(),
                        code,
                        "",
                        expected=True,
                        replica=m.label(r),
                    )
                )
            except Exception:
                log.exception("stopping %s failed", m.run_spec(r).runner_name)
        r.task = None
        r.asleep = None
        r.generation = 0
        r.leases = 0
        self._set_state(m, r, ModelState.STOPPED)
        self._pump()

    def _idle_out(self, m: _Model, r: _Replica, detail: str) -> None:
        """``r`` has been idle long enough: it sleeps where it can, else it stops."""
        if self._can_sleep(m, r):
            self._sleep(m, r, "idle", detail)
        else:
            self._unload(m, r, "idle", detail)

    def _evict(
        self,
        m: _Model,
        r: _Replica,
        short: Iterable[str],
        reason: EvictionReason,
        detail: str = "",
        *,
        for_model: str = "",
    ) -> None:
        """Frees ``r``'s memory on the ``short`` devices: by sleeping, where it can and
        only GPUs are short, else by stopping it."""
        short = set(short)
        gpus_only = bool(short) and all(d.startswith("gpu") for d in short)
        if gpus_only and self._can_sleep(m, r):
            self._sleep(m, r, reason, detail, for_model=for_model)
        else:
            self._unload(m, r, reason, detail, for_model=for_model)

    def _can_sleep(self, m: _Model, r: _Replica) -> bool:
        return (
            bool(m.spec.sleep_level)
            and r.state is S.READY
            and isinstance(r.running, Sleeper)
            and r.unload_when_idle is None
        )

    def _sleep(
        self,
        m: _Model,
        r: _Replica,
        reason: EvictionReason,
        detail: str = "",
        *,
        for_model: str = "",
    ) -> None:
        """Puts ``r`` to sleep: its GPU memory is given back, its process stays."""
        r.no_expiry()
        now = self._clock.now()
        level = m.spec.sleep_level
        full = self.ledger.footprint(m.run_spec(r))
        freed = {d: n for d, n in full.items() if d != "ram"}
        text = f"{detail}; asleep (level {level})" if detail else f"asleep (level {level})"
        event = Evicted(m.spec.name, now, reason, text, for_model, freed, replica=m.label(r))
        self._emit(event)
        self._set_state(m, r, S.SLEEPING, text)
        r.slept_at = now
        r.asleep = None
        name = m.run_spec(r).runner_name
        r.task = asyncio.create_task(self._run_sleep(m, r, level), name=f"sleep {name}")

    async def _run_sleep(self, m: _Model, r: _Replica, level: int) -> None:
        running = r.running
        assert isinstance(running, Sleeper)
        try:
            await running.sleep(level)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            r.task = None
            if r.running is running and r.state is S.SLEEPING:
                message = exc.message if isinstance(exc, ModelyardError) else repr(exc)
                log.warning("%s did not go to sleep (%s); stopping it", m.spec.name, message)
                self._unload(m, r, "idle", f"sleep failed: {message}")
            return
        r.task = None
        if r.running is not running or r.state is not S.SLEEPING:
            return  # it exited meanwhile (handled as a crash)
        r.asleep = running.footprint()
        if r.unload_when_idle is not None:
            self._unload(m, r, *r.unload_when_idle)
        self._pump()

    def _retire(self, m: _Model) -> None:
        """``m`` left the catalog: unload it once its requests are done, then forget it."""
        m.removed = True
        m.pending = None
        for r in m.replicas:
            if self._stoppable(m, r):
                self._unload(m, r, "reload", "removed from the catalog")
            elif r.live or r.state is ModelState.SLEEPING:
                r.unload_when_idle = ("reload", "removed from the catalog")
        if m.stopped:
            self._forget(m)

    def _forget(self, m: _Model) -> None:
        error = ModelNotFoundError(
            f"The model {m.spec.name!r} was removed from the catalog", param="model"
        )
        for waiter in list(m.waiters):
            self._fail(m, waiter, error)
        for r in m.replicas:
            r.no_expiry()
        if self._models.get(m.spec.name) is m:
            del self._models[m.spec.name]

    def _respec(self, m: _Model, spec: ModelSpec) -> None:
        m.spec = spec
        m.pending = None
        m.failures = 0
        m.retry_at = 0.0
        m.size_replicas()

    # ---- bookkeeping ---------------------------------------------------------------------------

    def _held(self, m: _Model, r: _Replica) -> Footprint:
        """What ``r`` counts for in the budget: asleep, what it was measured to hold asleep
        (its RAM part until then); else the footprint of its settings."""
        full = self.ledger.footprint(m.run_spec(r))
        if self._asleep(r):
            return r.asleep if r.asleep is not None else {"ram": full.get("ram", 0)}
        return full

    @staticmethod
    def _asleep(r: _Replica) -> bool:
        """Asleep, not going to sleep."""
        return r.state is S.SLEEPING and r.task is None

    def _stoppable(self, m: _Model, r: _Replica) -> bool:
        """Can be stopped now: ready and idle, or asleep."""
        return (r.state is S.READY and m.replica_idle(r)) or self._asleep(r)

    def _replica_of(self, lease: Lease) -> tuple[_Model, _Replica] | None:
        """The model and runner ``lease`` counts on; ``None`` once that runner has exited."""
        m = self._models.get(lease.model)
        if m is None or lease.replica >= len(m.replicas):
            return None
        r = m.replicas[lease.replica]
        return (m, r) if r.generation == lease.generation else None

    def _key(self, m: _Model, r: _Replica) -> str:
        """How the eviction policy names a runner: the model's name, ``@N`` after the first."""
        return f"{m.spec.name}@{r.index}" if r.index else m.spec.name

    def _by_key(self, key: str) -> tuple[_Model, _Replica]:
        name, _, index = key.rpartition("@") if key not in self._models else (key, "", "0")
        m = self._models[name]
        return m, m.replicas[int(index)]

    def _set_state(self, m: _Model, r: _Replica, new: ModelState, reason: str = "") -> None:
        """The one place a runner's state changes."""
        old = r.state
        check_transition(old, new)
        r.state = new
        name = m.run_spec(r).runner_name
        log.info("model %s: %s -> %s%s", name, old, new, f" ({reason})" if reason else "")
        self._emit(
            StateChanged(
                m.spec.name,
                self._clock.now(),
                old=old,
                new=new,
                reason=reason,
                replica=m.label(r),
            )
        )
        if new in (ModelState.STOPPED, ModelState.FAILED):
            r.placed = None  # the next start chooses again
            if m.stopped:
                if m.removed:
                    self._forget(m)
                elif m.pending is not None:
                    self._respec(m, m.pending)

    def _emit(self, event: Event) -> int:
        """Tells the listeners; a decision also goes into the journal (its id is returned,
        else 0)."""
        entry = self.journal.record(event) if isinstance(event, DECISIONS) else 0
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed on %r", event)
        return entry

    def _refuse(
        self,
        m: _Model,
        reason: RefusalReason,
        error: ModelyardError,
        *,
        needed: Footprint | None = None,
        budget: Footprint | None = None,
        in_use: Footprint | None = None,
    ) -> ModelyardError:
        """``error``, recorded as a ``Refused`` decision and naming its event."""
        event = Refused(
            m.spec.name,
            self._clock.now(),
            reason,
            error.message,
            dict(needed or {}),
            dict(budget or {}),
            dict(in_use or {}),
        )
        error.add_event(self._emit(event))
        return error

    def _record(self, m: _Model, r: _Replica, footprint: Footprint) -> None:
        """Counts a measurement of ``r``; growth past its estimate is reported once."""
        spec = m.run_spec(r)
        peak = self.ledger.record(spec, footprint)
        if peak is None or m.spec.memory is not None or m.over_estimate:
            return
        share = self.ledger.estimate_or_empty(spec)
        over = {d: n for d, n in peak.items() if share.get(d) and n > share[d] * 1.1}
        if over:
            m.over_estimate = True
            parts = ", ".join(
                f"{format_size(n)} of {d} (estimated {format_size(share[d])})"
                for d, n in over.items()
            )
            log.warning("model %s grew past its estimate: %s", m.spec.name, parts)

    def _measure_tick(self) -> None:
        self._measure_timer = None
        if self._closed:
            return

        async def run() -> None:
            try:
                await self.measure()
            except Exception:
                log.exception("measuring runners failed")
            finally:
                self._measuring = None
                self.start_measuring()

        self._measuring = asyncio.create_task(run(), name="measure runners")

    def _check_pressure(self) -> None:
        """Evicts idle models while the resident ones use more than the budget."""
        now = self._clock.now()
        relief = relieve(self._snapshot(), now)
        if relief is None:
            if self._pressure:
                log.info("memory back within the budget")
            self._pressure = False
            return
        reserved = self.reserved()
        over = relief.over[LOCAL]
        victims = relief.victims
        used = ", ".join(f"{format_size(reserved[d])} of {d}" for d in over)
        budget = ", ".join(f"{format_size(self.ledger.budget.get(d, 0))}" for d in over)
        if not self._pressure:
            log.warning(
                "memory pressure: models use %s, over the budget of %s; evicting %s",
                used,
                budget,
                ", ".join(victims) or "nothing (every model is busy or pinned)",
            )
        self._pressure = True
        self._emit(
            MemoryPressure(
                "", now, used=dict(reserved), evicting=victims, budget=self.ledger.budget
            )
        )
        for key in victims:
            detail = f"memory pressure: {used} in use, budget {budget}"
            self._evict(*self._by_key(key), set(over), "memory", detail)


def _sum(footprints: Iterable[Footprint]) -> dict[str, int]:
    """Per device, what ``footprints`` hold together."""
    total: dict[str, int] = {}
    for footprint in footprints:
        for device, amount in footprint.items():
            total[device] = total.get(device, 0) + amount
    return total
