"""Leases, queues, keep-alive, loading and eviction: all scheduling state lives here.

Everything runs on one event loop and every decision is made synchronously in ``_pump``, so
no locks are needed. Side effects (starting and stopping runners) go through the ``Runner``
seam; time goes through the injected ``Clock``; memory is accounted by the ``Ledger``
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
- ``update_catalog`` swaps the catalog while serving: new models can be requested at once;
  a removed model takes no new requests, finishes the ones it has (queued included), then
  unloads and is forgotten; a model whose settings changed keeps running as it is and takes
  the new settings at its next load (at once when it is not loaded).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, MutableMapping
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
from modelyard.runners.base import Runner, RunningModel
from modelyard.scheduler.budget import Ledger
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
from modelyard.scheduler.policy import Loaded, choose_victims, fits
from modelyard.scheduler.queue import FairQueue
from modelyard.scheduler.state import RESIDENT, ModelState, check_transition

log = logging.getLogger(__name__)


class Unset:
    pass


UNSET: Final = Unset()
"""``keep_alive`` not given by the request: use the catalog's."""

_BACKOFF_MAX = 60.0
_MAX_LAYERS = 1024
"""More layers than any model has (``gpu_layers = "auto"`` searches below it)."""
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
class _Model:
    spec: ModelSpec
    state: ModelState = ModelState.STOPPED
    running: RunningModel | None = None
    generation: int = 0
    leases: int = 0
    waiters: FairQueue[_Waiter] = field(default_factory=FairQueue)
    keep_alive: float | None = None
    loaded_at: float = 0.0
    load_started: float = 0.0
    last_used: float = 0.0
    expires_at: float | None = None
    expiry: Timer | None = None
    unload_when_idle: tuple[EvictionReason, str] | None = None
    """Unload once idle, and why."""
    failures: int = 0
    """Loads that failed in a row: waiting requests fail fast until ``retry_at``."""
    retry_at: float = 0.0
    crashes: int = 0
    """Runner exits in a row without a request served in between."""
    restart_at: float = 0.0
    """Waiting requests start the runner again no sooner than this."""
    over_estimate: bool = False
    """Its measured memory went past its estimate (reported once)."""
    last_error: str | None = None
    task: asyncio.Task[None] | None = None
    watcher: asyncio.Task[None] | None = None
    pending: ModelSpec | None = None
    """New settings from the catalog, applied when the running model stops."""
    placed: ModelSpec | None = None
    """The settings its runner was started with, where the scheduler chose some (the layers
    of ``gpu_layers = "auto"``); ``None`` while stopped."""
    removed: bool = False
    """Gone from the catalog: finishing its requests, then forgotten."""

    @property
    def idle(self) -> bool:
        return self.leases == 0 and not self.waiters

    @property
    def run_spec(self) -> ModelSpec:
        """The settings its memory is counted by: those it was started with, once started."""
        return self.placed or self.spec


@dataclass(frozen=True)
class ModelStatus:
    name: str
    spec: ModelSpec
    """The catalog's entry (for a loaded model whose settings changed: the new settings)."""
    removed: bool
    """Removed from the catalog and still finishing requests."""
    state: ModelState
    estimate: Footprint
    measured: Footprint | None
    queued: int
    in_flight: int
    parallel: int
    loaded_since: float | None
    """Wall-clock time (``time.time()``) the current runner became ready."""
    expires_at: float | None
    """Wall-clock time the keep-alive runs out; ``None`` while busy or when it never does."""
    pinned: bool
    last_error: str | None


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
        self.ledger = Ledger(budget, runners, measured)
        self._models: dict[str, _Model] = {spec.name: _Model(spec) for spec in catalog}
        self._seq = 0
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
        try:
            self.ledger.check_fits(m.spec)
        except DoesNotFitError as exc:
            raise self._refuse(
                m,
                "too_big",
                exc,
                needed=self.ledger.footprint(m.spec),
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
            free_slots = max(0, m.spec.parallel - m.leases)
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
        m = self._models.get(lease.model)
        if m is None or lease.generation != m.generation:
            return  # the runner it was for has exited since (or the model is gone)
        if served:
            m.crashes = 0
        m.leases -= 1
        m.last_used = self._clock.now()
        self._emit(LeaseReleased(m.spec.name, m.last_used))
        if m.idle:
            self._start_keep_alive(m)
        self._pump()

    @contextlib.asynccontextmanager
    async def lease(
        self, name: str, keep_alive: float | Unset | None = UNSET, *, request: str = ""
    ) -> AsyncIterator[Lease]:
        lease = await self.acquire(name, keep_alive, request=request)
        try:
            yield lease
        finally:
            self.release(lease)

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
        if pinned:
            if m.expiry is not None:
                m.expiry.cancel()
                m.expiry = None
            m.expires_at = None
        elif m.idle and m.state is ModelState.READY:
            self._start_keep_alive(m)
        self._pump()  # a model waiting for memory may now evict it

    async def unload(self, name: str) -> None:
        """Unloads ``name`` now if idle, else once its in-flight requests are done."""
        m = self._models[self._catalog.get(name).name]
        if m.state is ModelState.FAILED:
            self._set_state(m, ModelState.STOPPED, "unload requested")
            return
        if m.state is ModelState.READY and m.idle:
            self._unload(m, "manual", "unload requested")
        elif m.state in (ModelState.READY, ModelState.LOADING):
            m.unload_when_idle = ("manual", "unload requested")
        if m.task is not None:
            await asyncio.shield(m.task)

    def running(self, name: str) -> RunningModel | None:
        """The runner of the model called ``name`` (its canonical name), if it runs."""
        m = self._models.get(name)
        return m.running if m is not None else None

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
        m = self._models.get(lease.model)
        if m is None or lease.generation != m.generation or m.running is None:
            return True  # already known to be gone
        running = m.running
        try:
            code = await asyncio.wait_for(asyncio.shield(running.wait()), grace)
        except TimeoutError:
            return False
        self._exited(m, running, code)
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
            (m, m.running)
            for m in self._models.values()
            if m.state is ModelState.READY and m.running is not None
        ]

        def sample() -> list[Footprint]:
            return [running.footprint() for _, running in targets]

        footprints = await asyncio.to_thread(sample)
        for (m, running), footprint in zip(targets, footprints, strict=True):
            if m.running is running and m.state is ModelState.READY:
                self._record(m, footprint)
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
                m.unload_when_idle = None
            if spec == (m.pending or m.spec):
                continue
            changed.append(spec.name)
            if spec == m.spec:
                m.pending = None  # changed back before it took effect
            elif m.state in (ModelState.STOPPED, ModelState.FAILED) and m.task is None:
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
            result.append(
                ModelStatus(
                    name=m.spec.name,
                    spec=m.pending or m.spec,
                    removed=m.removed,
                    state=m.state,
                    estimate=self.ledger.estimate_or_empty(m.run_spec),
                    measured=self.ledger.measured(m.run_spec),
                    queued=len(m.waiters),
                    in_flight=m.leases,
                    parallel=m.spec.parallel,
                    loaded_since=m.loaded_at + offset if m.state is ModelState.READY else None,
                    expires_at=(
                        m.expires_at + offset
                        if m.expires_at is not None and m.state is ModelState.READY and m.idle
                        else None
                    ),
                    pinned=m.spec.pinned,
                    last_error=m.last_error,
                )
            )
        return result

    def reserved(self) -> dict[str, int]:
        """Memory held by resident models, per device."""
        return self.ledger.total(m.run_spec for m in self._models.values() if m.state in RESIDENT)

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
        for m in self._models.values():
            for waiter in list(m.waiters):
                self._fail(m, waiter, LoadFailedError("the server is shutting down"))
            if m.expiry is not None:
                m.expiry.cancel()
        tasks = [m.task for m in self._models.values() if m.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stops = []
        for m in self._models.values():
            if m.watcher is not None:
                m.watcher.cancel()
            if m.running is not None:
                stops.append(m.running.stop(grace))
                m.running = None
        await asyncio.gather(*stops, return_exceptions=True)
        self.ledger.flush()

    # ---- the decision ------------------------------------------------------------------------

    def _pump(self) -> None:
        """Makes every decision that can be made now, in this order:

        1. Grant waiters of ready models, oldest first, up to each model's ``parallel``.
        2. Consider cold models with waiters in order of their oldest waiter (memory is
           handed out first come, first served): fail fast while a model backs off after
           failed loads; skip it (its waiters wait) until a crashed runner's restart
           delay is over; load it if it fits in free memory; if it will fit once models
           already unloading are gone, wait; else evict idle models chosen by the policy
           and wait for them; if the policy finds none, wait. The first model that has to
           wait stops the pass, so a later request cannot take the memory it waits for.
        """
        if self._closed:
            return
        now = self._clock.now()
        for m in self._models.values():
            if m.state is ModelState.READY:
                while m.waiters and m.leases < m.spec.parallel:
                    waiter = m.waiters.popleft()
                    # Cancelled, and its task has not yet run to forget it: skip it.
                    if not waiter.future.done():
                        self._grant(m, waiter, now)

        cold = [
            m
            for m in self._models.values()
            if m.waiters and m.state in (ModelState.STOPPED, ModelState.FAILED)
        ]
        cold.sort(key=lambda m: m.waiters.oldest().seq)
        for m in cold:
            if m.retry_at > now:
                error = LoadFailedError(
                    f"Model {m.spec.name!r} failed to load and is backing off for "
                    f"{m.retry_at - now:.0f}s more. Last error: {m.last_error}",
                    retry_after=max(1, math.ceil(m.retry_at - now)),
                )
                self._refuse(m, "backing_off", error)
                for waiter in list(m.waiters):
                    self._fail(m, waiter, error)
                continue
            if m.restart_at > now:
                self._pump_at(m.restart_at)
                continue
            if not self._place(m, now):
                break

    def _place(self, m: _Model, now: float) -> bool:
        """Loads ``m`` or makes room for it; ``False`` when it has to wait.

        The caps on loaded models (``max_loaded``) are devices too, of one unit per model,
        so that the same policy chooses whom to evict for a count as for memory."""
        unloading = [x.run_spec for x in self._models.values() if x.state is ModelState.UNLOADING]
        resident = [x.run_spec for x in self._models.values() if x.state in RESIDENT]
        free_now = self.ledger.free(self.reserved())
        free_soon = {d: n + self.ledger.total(unloading).get(d, 0) for d, n in free_now.items()}
        spec = self._fit_layers(m.spec, free_soon) if m.spec.gpu_layers == "auto" else m.spec
        need = {**self.ledger.estimate(spec), **self._slots(spec)}
        for cap, limit in self._max_loaded.items():
            held = sum(self._slots(spec).get(cap, 0) for spec in resident)
            going = sum(self._slots(spec).get(cap, 0) for spec in unloading)
            free_now[cap], free_soon[cap] = limit - held, limit - held + going
        loaded = [
            replace(x, footprint={**x.footprint, **self._slots(self._models[x.name].spec)})
            for x in self._loaded()
        ]
        victims = choose_victims(need, free_soon, loaded, now, self._min_residency)
        if victims is None:
            self._repump_after_residency(loaded, now)
            return False
        if victims:
            short = {d for d, n in need.items() if n > free_soon.get(d, 0)}
            reason: EvictionReason = "max_loaded" if short <= self._max_loaded.keys() else "memory"
            for name in victims:
                self._unload(self._models[name], reason, for_model=m.spec.name)
            return False
        if not fits(need, free_now):
            return False  # the memory is being freed by unloads in progress
        m.placed = spec if spec is not m.spec else None
        self._load(m)
        return True

    def _fit_layers(self, spec: ModelSpec, free: Footprint) -> ModelSpec:
        """``spec`` with the most GPU layers whose GPU memory fits ``free`` on its GPUs as
        they are (nothing is evicted for a layer); 0 layers, the CPU, when none fits."""

        def gpu_fits(layers: int) -> bool:
            need = self.ledger.estimate(replace(spec, gpu_layers=layers))
            return fits({d: n for d, n in need.items() if d != "ram"}, free)

        if gpu_fits(-1):
            return replace(spec, gpu_layers=-1)
        low, high = 0, _MAX_LAYERS  # gpu_fits(low) holds; past a model's layers all are on it
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if gpu_fits(middle) else (low, middle)
        return replace(spec, gpu_layers=low)

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

    def _repump_after_residency(self, loaded: Iterable[Loaded], now: float) -> None:
        young = [
            x.loaded_at + self._min_residency
            for x in loaded
            if not x.busy and not x.pinned and now - x.loaded_at < self._min_residency
        ]
        if young:
            if self._pump_timer is not None:
                self._pump_timer.cancel()
            self._pump_timer = self._clock.call_at(min(young), self._pump)

    # ---- effects -------------------------------------------------------------------------------

    def _grant(self, m: _Model, waiter: _Waiter, now: float) -> None:
        if waiter.timer is not None:
            waiter.timer.cancel()
        if m.expiry is not None:
            m.expiry.cancel()
            m.expiry = None
        m.expires_at = None
        m.keep_alive = (
            m.spec.keep_alive if isinstance(waiter.keep_alive, Unset) else waiter.keep_alive
        )
        m.leases += 1
        m.last_used = now
        assert m.running is not None
        queued = now - waiter.enqueued_at
        # Time it waited while the model was not ready (for it, or for a load before it).
        load_wait = max(0.0, min(queued, m.loaded_at - waiter.enqueued_at))
        lease = Lease(
            m.spec.name, m.running.base_url, m.running.headers, queued, m.generation, load_wait
        )
        waiter.future.set_result(lease)
        self._emit(LeaseAcquired(m.spec.name, now, queued=queued, load_wait=load_wait))

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
        if m.idle and m.state is ModelState.READY and m.expires_at is None:
            self._start_keep_alive(m)
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

    def _start_keep_alive(self, m: _Model) -> None:
        if m.state is ModelState.READY and m.unload_when_idle is not None:
            self._unload(m, *m.unload_when_idle)
            return
        if m.state is ModelState.READY and m.keep_alive == 0:
            self._unload(m, "idle", "keep_alive 0")
            return
        if m.spec.pinned or m.keep_alive is None or m.state is not ModelState.READY:
            m.expires_at = None
            return
        m.expires_at = self._clock.now() + m.keep_alive
        if m.expiry is not None:
            m.expiry.cancel()
        m.expiry = self._clock.call_at(m.expires_at, lambda: self._expire(m))

    def _expire(self, m: _Model) -> None:
        m.expiry = None
        if m.state is ModelState.READY and m.idle and m.expires_at is not None:
            self._emit(KeepAliveExpired(m.spec.name, self._clock.now()))
            self._unload(m, "idle", "keep-alive expired")

    def _load(self, m: _Model) -> None:
        m.load_started = self._clock.now()
        self._set_state(m, ModelState.LOADING)
        m.task = asyncio.create_task(self._run_load(m), name=f"load {m.spec.name}")

    async def _run_load(self, m: _Model) -> None:
        runner = self._runners[m.spec.engine]
        try:
            running = await runner.start(m.run_spec)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            m.failures += 1
            m.retry_at = self._clock.now() + backoff(m.failures)
            m.last_error = exc.message if isinstance(exc, ModelyardError) else repr(exc)
            if not isinstance(exc, ModelyardError):
                log.exception("loading %s failed", m.spec.name)
            now = self._clock.now()
            event = LoadFailed(
                m.spec.name, now, now - m.load_started, m.last_error, m.retry_at - now
            )
            failed = self._emit(event)
            self._set_state(m, ModelState.FAILED, m.last_error)
            error = LoadFailedError(f"Model {m.spec.name!r} failed to load: {m.last_error}")
            error.add_event(failed)
            for waiter in list(m.waiters):
                self._fail(m, waiter, error)
            m.task = None
            self._pump()
            return
        m.task = None
        m.running = running
        m.failures = 0
        m.last_error = None
        m.loaded_at = m.last_used = self._clock.now()
        # One process or two just started: measuring them takes well under a millisecond.
        measured = running.footprint()
        self._record(m, measured)
        self._emit(
            LoadFinished(m.spec.name, m.loaded_at, m.loaded_at - m.load_started, dict(measured))
        )
        self._set_state(m, ModelState.READY)
        m.watcher = asyncio.create_task(self._watch(m, running), name=f"watch {m.spec.name}")
        if m.idle:
            m.keep_alive = m.spec.keep_alive
            self._start_keep_alive(m)
        self._pump()

    async def _watch(self, m: _Model, running: RunningModel) -> None:
        self._exited(m, running, await running.wait())

    def _exited(self, m: _Model, running: RunningModel, code: int) -> None:
        """``running`` exited with ``code``; a no-op unless it was ``m``'s ready runner."""
        if m.running is not running or m.state is not ModelState.READY:
            return  # stopped by us, or handled already
        if m.watcher is not None and m.watcher is not asyncio.current_task():
            m.watcher.cancel()
        m.watcher = None
        tail = running.log_tail()
        now = self._clock.now()
        m.running = None
        m.generation += 1
        m.leases = 0
        m.crashes += 1
        m.restart_at = now + backoff(m.crashes)
        m.last_error = f"runner exited unexpectedly with code {code}: {tail[-500:]}"
        if m.crashes <= 2:
            log.error("runner for %s exited with code %s:\n%s", m.spec.name, code, tail)
        else:
            log.error(
                "runner for %s exited with code %s again (%d times without serving a request); "
                "restarting in %.0fs",
                m.spec.name,
                code,
                m.crashes,
                m.restart_at - now,
            )
        if m.expiry is not None:
            m.expiry.cancel()
        m.expires_at = None
        self._emit(RunnerExited(m.spec.name, now, code=code, log_tail=tail))
        freed = dict(self.ledger.footprint(m.run_spec))
        self._emit(
            Evicted(m.spec.name, now, "crash", f"runner exited with {exit_name(code)}", freed=freed)
        )
        self._emit(Restarting(m.spec.name, now, m.restart_at - now, m.crashes))
        self._set_state(m, ModelState.STOPPED, f"runner exited with {exit_name(code)}")
        self._pump()

    def _unload(
        self, m: _Model, reason: EvictionReason, detail: str = "", *, for_model: str = ""
    ) -> None:
        if m.expiry is not None:
            m.expiry.cancel()
            m.expiry = None
        m.expires_at = None
        m.unload_when_idle = None
        freed = self.ledger.footprint(m.run_spec)
        now = self._clock.now()
        self._emit(Evicted(m.spec.name, now, reason, detail, for_model, dict(freed)))
        text = detail or (f"evicted to make room for {for_model}" if for_model else reason)
        self._set_state(m, ModelState.UNLOADING, text)
        m.task = asyncio.create_task(self._run_unload(m), name=f"unload {m.spec.name}")

    async def _run_unload(self, m: _Model) -> None:
        running, m.running = m.running, None
        if m.watcher is not None:
            m.watcher.cancel()
            m.watcher = None
        if running is not None:
            try:
                await running.stop(self._stop_grace)
                code = await asyncio.wait_for(running.wait(), 1.0)
                self._emit(RunnerExited(m.spec.name, self._clock.now(), code, "", expected=True))
            except Exception:
                log.exception("stopping %s failed", m.spec.name)
        m.task = None
        m.generation += 1
        m.leases = 0
        self._set_state(m, ModelState.STOPPED)
        self._pump()

    def _retire(self, m: _Model) -> None:
        """``m`` left the catalog: unload it once its requests are done, then forget it."""
        m.removed = True
        m.pending = None
        if m.state is ModelState.READY and m.idle:
            self._unload(m, "reload", "removed from the catalog")
        elif m.state in (ModelState.READY, ModelState.LOADING):
            m.unload_when_idle = ("reload", "removed from the catalog")
        elif m.state in (ModelState.STOPPED, ModelState.FAILED):
            self._forget(m)

    def _forget(self, m: _Model) -> None:
        error = ModelNotFoundError(
            f"The model {m.spec.name!r} was removed from the catalog", param="model"
        )
        for waiter in list(m.waiters):
            self._fail(m, waiter, error)
        if m.expiry is not None:
            m.expiry.cancel()
        if self._models.get(m.spec.name) is m:
            del self._models[m.spec.name]

    def _respec(self, m: _Model, spec: ModelSpec) -> None:
        m.spec = spec
        m.pending = None
        m.failures = 0
        m.retry_at = 0.0

    # ---- bookkeeping ---------------------------------------------------------------------------

    def _set_state(self, m: _Model, new: ModelState, reason: str = "") -> None:
        """The one place a model's state changes."""
        old = m.state
        check_transition(old, new)
        m.state = new
        log.info("model %s: %s -> %s%s", m.spec.name, old, new, f" ({reason})" if reason else "")
        self._emit(StateChanged(m.spec.name, self._clock.now(), old=old, new=new, reason=reason))
        if new in (ModelState.STOPPED, ModelState.FAILED):
            m.placed = None  # the next start chooses again
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

    def _record(self, m: _Model, footprint: Footprint) -> None:
        """Counts a measurement of ``m``; growth past its estimate is reported once."""
        peak = self.ledger.record(m.run_spec, footprint)
        if peak is None or m.spec.memory is not None or m.over_estimate:
            return
        share = self.ledger.estimate_or_empty(m.run_spec)
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
        reserved = self.reserved()
        over = self.ledger.over(reserved)
        if not over:
            if self._pressure:
                log.info("memory back within the budget")
            self._pressure = False
            return
        now = self._clock.now()
        loaded = self._loaded()
        # Evict as much as can be evicted, even if it is not enough: the rest waits.
        victims = choose_victims(over, {}, loaded, now) or [
            x.name for x in loaded if not x.busy and not x.pinned
        ]
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
                "", now, used=dict(reserved), evicting=tuple(victims), budget=self.ledger.budget
            )
        )
        for name in victims:
            self._unload(
                self._models[name], "memory", f"memory pressure: {used} in use, budget {budget}"
            )

    def _loaded(self) -> list[Loaded]:
        """The ready models, as the eviction policy sees them."""
        return [
            Loaded(
                name=x.spec.name,
                footprint=self.ledger.footprint(x.run_spec),
                busy=not x.idle,
                pinned=x.spec.pinned,
                expires_at=x.expires_at,
                last_used=x.last_used,
                loaded_at=x.loaded_at,
            )
            for x in self._models.values()
            if x.state is ModelState.READY
        ]
