"""The runners' side of scheduling: starting, stopping and putting runners to sleep, their
keep-alive, and what their replicas report, as events.

The scheduler decides (who is served, where a runner goes, whom to evict) and tells the
``Fleet`` to act; the fleet acts on replicas and tells the world (``emit``). It decides only
what follows from a runner's own life: a keep-alive that ran out idles it, a runner marked
to unload when idle unloads, a runner that did not go to sleep is stopped, and memory over
the budget evicts idle runners (``pressure``, after each measurement).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from modelyard.catalog.spec import Footprint, ModelSpec
from modelyard.clock import Clock
from modelyard.errors import ModelyardError
from modelyard.quantity import format_size
from modelyard.runners.base import KvNews, Runner, Sleeper
from modelyard.scheduler import account
from modelyard.scheduler.budget import MemoryLedger
from modelyard.scheduler.event import (
    Event,
    Evicted,
    EvictionReason,
    KeepAliveExpired,
    KvDiscarded,
    KvMissed,
    KvNoReuse,
    KvRestored,
    KvSaved,
    LoadFailed,
    LoadFinished,
    MemoryPressure,
    NodeJoined,
    NodeLost,
    Restarting,
    RunnerExited,
    StateChanged,
    exit_name,
)
from modelyard.scheduler.meter import record
from modelyard.scheduler.model import Model
from modelyard.scheduler.placement import LOCAL, Snapshot, relieve
from modelyard.scheduler.replica import (
    Changed,
    Crashed,
    Exited,
    Expired,
    Replica,
    Report,
    SleepFailed,
    Slept,
    Started,
    StartFailed,
    backoff,
)
from modelyard.scheduler.state import RESIDENT, ModelState
from modelyard.scheduler.state import ModelState as S

log = logging.getLogger(__name__)


class Fleet:
    """Acts on the replicas of ``models`` (the scheduler's, read here, never changed)."""

    def __init__(
        self,
        models: Mapping[str, Model],
        runners: Mapping[str, Runner],
        ledger: MemoryLedger,
        clock: Clock,
        emit: Callable[[Event], int],
        caps: Mapping[str, int],
        min_residency: float,
    ) -> None:
        self._models = models
        self._runners = runners
        self._remote: dict[str, Mapping[str, Runner]] = {}
        """The runners of a cluster's other nodes, by node."""
        self.ledger = ledger
        self._clock = clock
        self._emit = emit
        self.caps = caps
        self.min_residency = min_residency
        self._pressure = False

    def snapshot(self) -> Snapshot:
        """Every runner holding memory, as placement sees it."""
        return account.snapshot(self.ledger, self._models.values(), self.caps, self.min_residency)

    def note(self, m: Model, r: Replica, report: Report) -> None:
        """Turns what ``r`` reports into events and the model's bookkeeping, and does what
        follows from it for the runner (its keep-alive once ready, an unload it was marked
        for, a stop when it did not go to sleep, an idle-out when its keep-alive ran out)."""
        now = self._clock.now()
        label = m.label(r)
        match report:
            case Changed(old, new, reason):
                name = m.spec.name
                self._emit(
                    StateChanged(
                        name, now, old=old, new=new, reason=reason, replica=label, node=r.node
                    )
                )
                if new is S.READY and m.replica_idle(r):
                    r.keep_alive = m.spec.keep_alive
                    self.keep_alive(m, r)
            case Started(measured, took, _):
                m.failures = 0
                m.last_error = None
                m.unreadable = False
                record(self.ledger, m, r, measured)
                self._emit(
                    LoadFinished(m.spec.name, now, took, dict(measured), replica=label, node=r.node)
                )
            case StartFailed(error, message, took):
                m.failures += 1
                m.retry_at = now + backoff(m.failures)
                m.last_error = message
                if not isinstance(error, ModelyardError):
                    log.error("loading %s failed", m.run_spec(r).runner_name, exc_info=error)
                event = LoadFailed(
                    m.spec.name, now, took, message, m.retry_at - now, replica=label, node=r.node
                )
                m.failed_event = self._emit(event)
            case Crashed(code, tail, lost):
                self.crashed(m, r, code, tail, lost=lost)
            case Exited(code):
                self._emit(
                    RunnerExited(
                        m.spec.name, now, code, "", expected=True, replica=label, node=r.node
                    )
                )
            case Slept():
                if r.unload_when_idle is not None:
                    self.unload(m, r, *r.unload_when_idle)
            case SleepFailed(message):
                log.warning("%s did not go to sleep (%s); stopping it", m.spec.name, message)
                self.unload(m, r, "idle", f"sleep failed: {message}")
            case KvNews():
                self._emit(_kv_event(m.spec.name, now, report, replica=label, node=r.node))
            case Expired():
                if r.state is S.READY and m.replica_idle(r) and r.expires_at is not None:
                    self._emit(KeepAliveExpired(m.spec.name, now, replica=label, node=r.node))
                    self.idle_out(m, r, "keep-alive expired")

    def keep_alive(self, m: Model, r: Replica) -> None:
        """``r`` went idle: its keep-alive runs (or it unloads or idles out now)."""
        if r.state is ModelState.READY and r.unload_when_idle is not None:
            self.unload(m, r, *r.unload_when_idle)
            return
        if r.state is ModelState.READY and r.keep_alive == 0:
            self.idle_out(m, r, "keep_alive 0")
            return
        if m.spec.pinned or r.keep_alive is None or r.state is not ModelState.READY:
            r.disarm()
            return
        r.arm(r.keep_alive)

    def load(self, m: Model, r: Replica, spec: ModelSpec) -> None:
        """Starts ``r`` with ``spec`` (or wakes it), on its node."""
        runners = self._runners if r.node == LOCAL else self._remote[r.node]
        r.load(runners[spec.engine], spec)

    def join(self, node: str, budget: Footprint, runners: Mapping[str, Runner]) -> None:
        """A cluster's node takes runners from now on (its runners start them there)."""
        self.ledger.nodes[node] = dict(budget)
        self._remote[node] = runners
        self._emit(NodeJoined("", self._clock.now(), dict(budget), node=node))

    def leave(self, node: str, reason: str) -> None:
        """A cluster's node is gone: no runner goes there any more. Its runners' exits are
        told by the runners themselves (their ``wait`` returns)."""
        if self.ledger.nodes.pop(node, None) is None:
            return
        del self._remote[node]
        there = tuple(
            m.spec.name
            for m in self._models.values()
            if any(r.node == node and r.state in RESIDENT for r in m.replicas)
        )
        self._emit(NodeLost("", self._clock.now(), reason, there, node=node))

    def unload(
        self,
        m: Model,
        r: Replica,
        reason: EvictionReason,
        detail: str = "",
        *,
        for_model: str = "",
    ) -> None:
        freed = account.held(self.ledger, m, r)
        now = self._clock.now()
        self._emit(
            Evicted(
                m.spec.name,
                now,
                reason,
                detail,
                for_model,
                dict(freed),
                replica=m.label(r),
                node=r.node,
            )
        )
        r.stop(detail or (f"evicted to make room for {for_model}" if for_model else reason))

    def sleep(
        self,
        m: Model,
        r: Replica,
        reason: EvictionReason,
        detail: str = "",
        *,
        for_model: str = "",
    ) -> None:
        """Puts ``r`` to sleep: its GPU memory is given back, its process stays."""
        level = m.spec.sleep_level
        full = self.ledger.footprint(m.run_spec(r))
        freed = {d: n for d, n in full.items() if d != "ram"}
        text = f"{detail}; asleep (level {level})" if detail else f"asleep (level {level})"
        now = self._clock.now()
        self._emit(
            Evicted(
                m.spec.name, now, reason, text, for_model, freed, replica=m.label(r), node=r.node
            )
        )
        r.sleep(level, text)

    def idle_out(self, m: Model, r: Replica, detail: str) -> None:
        """``r`` has been idle long enough: it sleeps where it can, else it stops."""
        if self.can_sleep(m, r):
            self.sleep(m, r, "idle", detail)
        else:
            self.unload(m, r, "idle", detail)

    def evict(
        self,
        m: Model,
        r: Replica,
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
        if gpus_only and self.can_sleep(m, r):
            self.sleep(m, r, reason, detail, for_model=for_model)
        else:
            self.unload(m, r, reason, detail, for_model=for_model)

    def can_sleep(self, m: Model, r: Replica) -> bool:
        return (
            bool(m.spec.sleep_level)
            and r.state is S.READY
            and isinstance(r.running, Sleeper)
            and r.unload_when_idle is None
        )

    def stoppable(self, m: Model, r: Replica) -> bool:
        """Can be stopped now: ready and idle, or asleep."""
        return (r.state is S.READY and m.replica_idle(r)) or r.sleeping

    def by_key(self, key: str) -> tuple[Model, Replica]:
        name, _, index = key.rpartition("@") if key not in self._models else (key, "", "0")
        m = self._models[name]
        return m, m.replicas[int(index)]

    def unreadable(self, m: Model, message: str) -> None:
        """A load of ``m`` failed before a runner could start: its files cannot be read (a
        corrupt or truncated file). The model shows as failed, with the reason, until a
        load succeeds or it is unloaded; the next request reads its files again."""
        now = self._clock.now()
        changed = not m.unreadable or m.last_error != message
        m.unreadable = True
        m.last_error = message
        if changed:  # one event per new reason, not one per request that hits it
            m.failed_event = self._emit(LoadFailed(m.spec.name, now, 0.0, message, 0.0))

    def forgive(self, m: Model, reason: str) -> None:
        """Clears the failure ``unreadable`` left: the model shows as stopped again."""
        if m.unreadable:
            m.unreadable = False
            self._emit(StateChanged(m.spec.name, self._clock.now(), S.FAILED, S.STOPPED, reason))

    def crashed(self, m: Model, r: Replica, code: int, tail: str, *, lost: bool = False) -> None:
        """``r``'s runner exited on its own (``lost``: with its node, a cluster's)."""
        now = self._clock.now()
        name = m.run_spec(r).runner_name
        label = m.label(r)
        freed = dict(account.held(self.ledger, m, r))
        self._emit(
            RunnerExited(m.spec.name, now, code=code, log_tail=tail, replica=label, node=r.node)
        )
        if lost:
            m.last_error = tail[-500:]
            log.warning("runner for %s is gone: %s", name, tail)
            self._emit(
                Evicted(
                    m.spec.name, now, "node_lost", tail, freed=freed, replica=label, node=r.node
                )
            )
            return
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
        detail = f"runner exited with {exit_name(code)}"
        self._emit(
            Evicted(m.spec.name, now, "crash", detail, freed=freed, replica=label, node=r.node)
        )
        self._emit(
            Restarting(m.spec.name, now, r.restart_at - now, r.crashes, replica=label, node=r.node)
        )

    def pressure(self) -> None:
        """Evicts idle models while the resident ones use more than the budget."""
        now = self._clock.now()
        relief = relieve(self.snapshot(), now)
        if relief is None:
            if self._pressure:
                log.info("memory back within the budget")
            self._pressure = False
            return
        reserved = account.reserved_on(self.ledger, self._models.values())
        budgets = self.ledger.budgets
        for node, over in sorted(relief.over.items()):
            victims = tuple(k for k in relief.victims if self.by_key(k)[1].node == node)
            held, budget = reserved.get(node, {}), budgets.get(node, {})
            used = ", ".join(f"{format_size(held.get(d, 0))} of {d}" for d in over)
            limit = ", ".join(f"{format_size(budget.get(d, 0))}" for d in over)
            if not self._pressure:
                log.warning(
                    "memory pressure%s: models use %s, over the budget of %s; evicting %s",
                    "" if node == LOCAL else f" on {node}",
                    used,
                    limit,
                    ", ".join(victims) or "nothing (every model is busy or pinned)",
                )
            self._emit(
                MemoryPressure(
                    "", now, used=dict(held), evicting=victims, budget=dict(budget), node=node
                )
            )
            for key in victims:
                detail = f"memory pressure: {used} in use, budget {limit}"
                self.evict(*self.by_key(key), set(over), "memory", detail)
        self._pressure = True


def _kv_event(model: str, at: float, news: KvNews, replica: int | None, node: str) -> Event:
    """The event of what a runner's warm swaps did."""
    n = news
    match n.kind:
        case "saved":
            return KvSaved(
                model, at, n.states, n.tokens, n.bytes, n.seconds, replica=replica, node=node
            )
        case "restored":
            return KvRestored(
                model, at, n.states, n.tokens, n.bytes, n.seconds, replica=replica, node=node
            )
        case "discarded":
            return KvDiscarded(model, at, n.states, n.bytes, n.detail, replica=replica, node=node)
        case "no_reuse":
            return KvNoReuse(model, at, n.detail, replica=replica, node=node)
    return KvMissed(model, at, replica=replica, node=node)
