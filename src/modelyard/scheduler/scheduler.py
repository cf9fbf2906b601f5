"""Leases, queues and the decisions who is served and where runners go: the one owner of
the models' state.

Everything runs on one event loop and every decision is made synchronously in ``_pump``, so
no locks are needed. The parts around this owner each keep one concern: placement
(``placement.plan``, pure: where a runner starts, whom to evict, or wait), a ``Replica`` per
runner (its life: state, tasks, timers, crashes, sleep; it reports through one callback),
the ``Fleet`` (acts on replicas and turns their reports into events), the ``Roster`` (the
models, as the catalog changes), ``account`` and the ``MemoryLedger`` (what is held and
will be), the ``Meter`` (measuring on a timer) and the ``Bus`` (events out, decisions into
the journal). Runners start through the ``Runner`` seam; time goes through the injected
``Clock``.

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
  is decided like memory, by the same placement (``placement.plan``).
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
import logging
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import replace

from modelyard.catalog.catalog import Catalog, CatalogChange
from modelyard.catalog.spec import Footprint, ModelSpec
from modelyard.clock import Clock, LoopClock, Timer
from modelyard.errors import (
    DoesNotFitError,
    LoadFailedError,
    ModelyardError,
)
from modelyard.runners.base import Runner, RunningModel
from modelyard.scheduler import account
from modelyard.scheduler.budget import MemoryLedger
from modelyard.scheduler.event import (
    CatalogReloaded,
    Event,
    LoadRequested,
    RefusalReason,
    Refused,
)
from modelyard.scheduler.fleet import Fleet
from modelyard.scheduler.journal import Bus, Journal
from modelyard.scheduler.meter import Meter
from modelyard.scheduler.model import (
    UNSET,
    Lease,
    Listed,
    Model,
    ModelStatus,
    Unset,
    Waiter,
)
from modelyard.scheduler.placement import LOCAL, Evict, Wait, plan
from modelyard.scheduler.replica import (
    Changed,
    Replica,
    Report,
    Slept,
)
from modelyard.scheduler.roster import Roster
from modelyard.scheduler.state import ModelState
from modelyard.scheduler.state import ModelState as S

log = logging.getLogger(__name__)


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
        self._clock: Clock = clock or LoopClock()
        self._stop_grace = stop_grace
        self.ledger = MemoryLedger(budget, runners, measured)
        self._models: dict[str, Model] = {}
        self._seq = 0
        self._bus = Bus(journal or Journal())
        self._emit = self._bus.emit
        caps = account.caps(max_loaded)
        self._fleet = Fleet(
            self._models, runners, self.ledger, self._clock, self._emit, caps, min_residency
        )
        self._pump_timer: Timer | None = None
        self._restart_timer: Timer | None = None
        self._restart_when = 0.0
        self._meter = Meter(
            self._clock, measure_interval, self.ledger, self._models.values, self._fleet.pressure
        )
        self._closed = False
        self._roster = Roster(self._models, self._fleet, self._clock, stop_grace, self._on_report)
        for spec in catalog:
            self._roster.add(spec)

    # ---- public API -------------------------------------------------------------------------

    @property
    def journal(self) -> Journal:
        """The event log of decisions."""
        return self._bus.journal

    @journal.setter
    def journal(self, journal: Journal) -> None:
        self._bus.journal = journal

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        self._bus.subscribe(listener)

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
        r = None if m.waiters else m.least_busy()
        if r is not None:
            # Nobody waits before it and a ready runner has a free slot: granted at once,
            # as ``_pump`` would (nothing else can have changed for the other models).
            now = self._clock.now()
            self._seq += 1
            future = asyncio.get_running_loop().create_future()
            waiter = Waiter(self._seq, future, now, keep_alive, request, client, weight)
            return m.grant(r, waiter, now)
        specs = [account.start_spec(m, r) for r in m.replicas]
        if not all(self.ledger.known(spec) for spec in (m.spec, *specs)):
            await self.ledger.ready([m.spec, *specs])  # the header is read in a thread
            m = self._models[self._catalog.get(name).name]
        now = self._clock.now()
        first = account.start_spec(m, m.replicas[0])
        try:
            self.ledger.check_fits(first)
        except LoadFailedError as exc:
            self._fleet.unreadable(m, exc.message)
            raise
        except DoesNotFitError as exc:
            raise self._refuse(
                m,
                "too_big",
                exc,
                needed=self.ledger.footprint(first),
                budget=dict(self.ledger.budget),
                in_use=self.reserved(),
                node=LOCAL,
            ) from None
        self._seq += 1
        future = asyncio.get_running_loop().create_future()
        waiter = Waiter(self._seq, future, now, keep_alive, request, client, weight)
        m.waiters.append(waiter)
        if len(m.waiters) == 1 and m.state not in (ModelState.READY, ModelState.LOADING):
            estimate = dict(self.ledger.estimate(m.spec))
            self._emit(LoadRequested(m.spec.name, now, request or "a request", estimate))
        self._pump()
        if not waiter.future.done():
            full = m.queue_full()
            if full is not None:
                m.waiters.remove(waiter)
                raise self._refuse(m, "queue_full", full)
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
        if m.replica_idle(r):
            self._fleet.keep_alive(m, r)
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
                r.disarm()
            elif m.replica_idle(r) and r.state is ModelState.READY:
                self._fleet.keep_alive(m, r)
        self._pump()  # a model waiting for memory may now evict it

    async def unload(self, name: str) -> None:
        """Unloads ``name`` now if idle, else once its in-flight requests are done."""
        m = self._models[self._catalog.get(name).name]
        self._fleet.forgive(m, "unload requested")
        for r in m.replicas:
            if r.state is ModelState.FAILED:
                r.set_state(ModelState.STOPPED, "unload requested")
            elif self._fleet.stoppable(m, r):
                self._fleet.unload(m, r, "manual", "unload requested")
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
        return m.runners() if m is not None else {}

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
        r = found[1]
        running = r.running
        assert running is not None
        try:
            code = await asyncio.wait_for(asyncio.shield(running.wait()), grace)
        except TimeoutError:
            return False
        r.exited(running, code)
        return True

    async def prepare(self, specs: Iterable[ModelSpec] | None = None) -> None:
        """Reads the estimates of ``specs`` (the whole catalog by default) in a thread."""
        await self.ledger.prepare(self._catalog if specs is None else specs)

    def start_measuring(self) -> None:
        """Measures every running model each ``measure_interval`` from now on."""
        self._meter.start()

    async def measure(self) -> None:
        """Measures every running model now (in a thread), then acts on what it found."""
        await self._meter.measure()

    def update_catalog(self, catalog: Catalog) -> CatalogChange:
        """Serves ``catalog`` from now on; see the module docstring (and ``roster``)."""
        self._catalog = catalog
        change = self._roster.swap(catalog)
        self._pump()
        if change.added or change.removed or change.changed:
            now = self._clock.now()
            added, removed, changed = change.added, change.removed, change.changed
            self._emit(CatalogReloaded("", now, tuple(added), tuple(removed), tuple(changed)))
        return change

    def status(self) -> list[ModelStatus]:
        """Every model in the catalog, with the memory last measured for loaded ones."""
        offset = time.time() - self._clock.now()
        return [account.status(self.ledger, m, offset) for m in self._models.values()]

    def listing(self) -> list[Listed]:
        """Every model in the catalog with its state, without the memory and replica figures
        ``status()`` works out (lists of a thousand models: 1 ms rather than 40)."""
        return [Listed(n, m.pending or m.spec, m.state, m.removed) for n, m in self._models.items()]

    def reserved(self) -> dict[str, int]:
        """Memory held by resident models, per device (of every node)."""
        return account.reserved(self.ledger, self._models.values())

    def budgets(self) -> dict[str, dict[str, int]]:
        """The memory budget, per node and device."""
        return {node: dict(budget) for node, budget in self.ledger.budgets.items()}

    def join(self, node: str, budget: Footprint, runners: Mapping[str, Runner]) -> None:
        """A cluster's ``node`` takes runners from now on, within ``budget``; ``runners``
        start them there. Requests waiting for room get another chance."""
        self._fleet.join(node, budget, runners)
        self._pump()

    def leave(self, node: str, reason: str) -> None:
        """A cluster's ``node`` is gone (``reason``): nothing is placed there any more; its
        runners, told gone by their ``wait``, load elsewhere as requests come."""
        self._fleet.leave(node, reason)
        self._pump()

    def reserved_on(self) -> dict[str, dict[str, int]]:
        """Memory held by resident models, per node and device."""
        return account.reserved_on(self.ledger, self._models.values())

    async def close(self, grace: float | None = None) -> None:
        """Stops every runner (each gets ``grace`` seconds, by default ``stop_grace``, before
        SIGKILL); waiting requests fail."""
        grace = self._stop_grace if grace is None else grace
        self._closed = True
        self._meter.close()
        for timer in (self._pump_timer, self._restart_timer):
            if timer is not None:
                timer.cancel()
        replicas = [r for m in self._models.values() for r in m.replicas]
        for m in self._models.values():
            for waiter in list(m.waiters):
                m.fail(waiter, LoadFailedError("the server is shutting down"))
        await asyncio.gather(*(r.close(grace) for r in replicas), return_exceptions=True)
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
                r = m.least_busy()
                if r is None:
                    break
                waiter = m.waiters.popleft()
                # Cancelled, and its task has not yet run to forget it: skip it.
                if not waiter.future.done():
                    m.grant(r, waiter, now)

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
            due = [r for r in m.replicas if r.sleeping]  # waking is the faster start
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

    def _scale_up_due(self, m: Model, now: float) -> bool:
        """``m``'s oldest request has waited ``scale_up_wait`` with no runner starting (else
        ``_pump`` runs again when it will have)."""
        if any(r.state is ModelState.LOADING for r in m.replicas):
            return False
        due = m.waiters.oldest().enqueued_at + m.spec.scale_up_wait
        if due > now:
            self._pump_at(due)
            return False
        return True

    def _back_off(self, m: Model, now: float) -> None:
        error = self._refuse(m, "backing_off", m.backing_off(now))
        for waiter in list(m.waiters):
            m.fail(waiter, error)

    def _place(self, m: Model, r: Replica, now: float, *, evict: bool = True) -> bool:
        """Starts (or wakes) ``r`` where ``placement.plan`` says, or evicts for it; ``False``
        when it has to wait. ``evict=False``: only in memory free now (a scale-up)."""
        need, spec = account.need(self.ledger, m, r, self._fleet.caps, evict=evict)
        decision = plan(self._fleet.snapshot(), need, now)
        if isinstance(decision, Evict):
            for key in decision.victims:
                victim, replica = self._fleet.by_key(key)
                self._fleet.evict(
                    victim, replica, decision.short, decision.reason, for_model=m.spec.name
                )
            return False
        if isinstance(decision, Wait):
            if decision.until is not None:
                if self._pump_timer is not None:
                    self._pump_timer.cancel()
                self._pump_timer = self._clock.call_at(decision.until, self._pump)
            return False
        if r.state is not S.SLEEPING:  # a sleeping runner wakes as it was started
            if spec.gpus_per_replica and spec.gpu_layers != "auto":
                devices = self.ledger.budgets.get(decision.node, {})
                spec = account.start_spec(m, r, decision.node, devices)  # that node's GPUs
            if decision.layers is not None:
                spec = replace(spec, gpu_layers=decision.layers)
            r.node = decision.node
        self._fleet.load(m, r, spec)
        return True

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

    def _abandon(self, m: Model, waiter: Waiter) -> None:
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
                self._fleet.keep_alive(m, r)
        self._pump()

    def _queue_timeout(self, m: Model, waiter: Waiter) -> None:
        if waiter.future.done():
            return
        error = m.timed_out(self._clock.now() - waiter.enqueued_at)
        m.fail(waiter, self._refuse(m, "queue_timeout", error))
        self._pump()

    # ---- bookkeeping ---------------------------------------------------------------------------

    def _replica_of(self, lease: Lease) -> tuple[Model, Replica] | None:
        """The model and runner ``lease`` counts on; ``None`` once that runner has exited."""
        m = self._models.get(lease.model)
        r = m.replica_of(lease) if m is not None else None
        return (m, r) if m is not None and r is not None else None

    def _on_report(self, m: Model, r: Replica, report: Report) -> None:
        """What a replica tells: the fleet makes its events and does what follows for the
        runner; then the model forgets or takes new settings once stopped, its waiters fail
        when its last runner failed to load, and what a finished task freed is handed out."""
        self._fleet.note(m, r, report)
        match report:
            case Changed(old, new):
                if new in (S.STOPPED, S.FAILED) and m.stopped:
                    self._roster.stopped(m)
                if new is S.FAILED and not any(y.live for y in m.replicas):
                    name = m.spec.name
                    error = LoadFailedError(f"Model {name!r} failed to load: {m.last_error}")
                    error.add_event(m.failed_event)
                    for waiter in list(m.waiters):
                        m.fail(waiter, error)
                if new in (S.READY, S.FAILED) or (new is S.STOPPED and old is not S.FAILED):
                    self._pump()
            case Slept():
                self._pump()

    def _refuse(
        self,
        m: Model,
        reason: RefusalReason,
        error: ModelyardError,
        *,
        needed: Footprint | None = None,
        budget: Footprint | None = None,
        in_use: Footprint | None = None,
        node: str | None = None,
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
            node=node,
        )
        error.add_event(self._emit(event))
        return error
