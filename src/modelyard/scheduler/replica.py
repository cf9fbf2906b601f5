"""One runner's life: its state, its runner, its tasks and timers, crashes and sleep.

A ``Replica`` does what its owner (the scheduler) tells it — ``load``, ``stop``, ``sleep``,
``arm`` a keep-alive — and tells back every transition through one callback, ``report``.
It never decides (where to start, whom to evict, who waits: the scheduler and placement do)
and never emits events or pumps: the owner turns reports into events and decisions.

Reports come in the order the events they become must go out (``Started`` before the
state change to ready, ``Crashed`` before the one to stopped). A state change is the last
thing a replica does in a task, so that what the owner decides on it sees the replica
settled. The owner acts (grants, starts more runners) on the reports of the replica's own
tasks, watchers and timers, never on the changes it asked for itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from modelyard.catalog.spec import Footprint, ModelSpec
from modelyard.clock import Clock, Timer
from modelyard.errors import ModelyardError
from modelyard.runners.base import KvNews, Runner, RunningModel, Sleeper, warm_of
from modelyard.scheduler.event import EvictionReason, exit_name
from modelyard.scheduler.placement import LOCAL
from modelyard.scheduler.state import ModelState, check_transition
from modelyard.scheduler.state import ModelState as S

log = logging.getLogger(__name__)

_BACKOFF_MAX = 60.0

_generations = itertools.count(1)


def backoff(failures: int) -> float:
    """Seconds to refuse loads after ``failures`` failures in a row: 0, 1, 2, 4 … 60."""
    return 0.0 if failures <= 1 else min(2.0 ** (failures - 2), _BACKOFF_MAX)


@dataclass(frozen=True)
class Changed:
    """Its state changed (every change, whoever asked for it)."""

    old: ModelState
    new: ModelState
    reason: str


@dataclass(frozen=True)
class Started:
    """Its runner started (or woke), before it is ready."""

    measured: Footprint
    took: float
    woken: bool


@dataclass(frozen=True)
class StartFailed:
    """Its runner did not start (or wake), before it is failed."""

    error: Exception
    message: str
    took: float


@dataclass(frozen=True)
class Crashed:
    """Its runner exited on its own (its crash count and restart time are set), before it
    is stopped; it still holds what it held."""

    code: int
    tail: str
    lost: bool = False
    """Its node was lost (a cluster's): no crash of its own, so no back-off."""


@dataclass(frozen=True)
class Exited:
    """Its runner exited as it was told to."""

    code: int


@dataclass(frozen=True)
class Slept:
    """Its runner has gone to sleep (``asleep`` holds what it holds asleep)."""


@dataclass(frozen=True)
class SleepFailed:
    """Its runner did not go to sleep; it still runs, asleep in name."""

    message: str


@dataclass(frozen=True)
class Expired:
    """Its keep-alive ran out."""


Report = Changed | Started | StartFailed | Crashed | Exited | Slept | SleepFailed | Expired | KvNews


class Replica:
    """One runner of a model and its lifecycle (a model has one unless ``max_replicas``)."""

    def __init__(
        self,
        model: str,
        index: int,
        clock: Clock,
        report: Callable[[Replica, Report], None],
        stop_grace: float,
    ) -> None:
        self.model = model
        self.index = index
        self._clock = clock
        self._report = report
        self._stop_grace = stop_grace
        self.state = ModelState.STOPPED
        self.running: RunningModel | None = None
        self.generation = 0
        """Unique to one run of a runner (0 while none runs): a lease counts only for it."""
        self.leases = 0
        self.keep_alive: float | None = None
        self.loaded_at = 0.0
        self.load_started = 0.0
        self.last_used = 0.0
        self.expires_at: float | None = None
        self._expiry: Timer | None = None
        self.unload_when_idle: tuple[EvictionReason, str] | None = None
        """Unload once idle, and why."""
        self.crashes = 0
        """Runner exits in a row without a request served in between."""
        self.restart_at = 0.0
        """Waiting requests start the runner again no sooner than this."""
        self.task: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.placed: ModelSpec | None = None
        """The settings its runner was started with (the layers of ``gpu_layers = "auto"``,
        the replica's number); ``None`` while stopped."""
        self.node = LOCAL
        """Where its runner runs (or last ran)."""
        self.asleep: Footprint | None = None
        """What it holds while it sleeps, measured (``None`` until it has gone to sleep)."""
        self.slept_at = 0.0

    @property
    def live(self) -> bool:
        """Serving, or about to: it takes requests."""
        return self.state in (ModelState.LOADING, ModelState.READY)

    @property
    def sleeping(self) -> bool:
        """Asleep, not going to sleep."""
        return self.state is S.SLEEPING and self.task is None

    @property
    def settled(self) -> bool:
        """Stopped or failed, with no task left."""
        return self.state in (S.STOPPED, S.FAILED) and self.task is None

    def _name(self) -> str:
        return self.placed.runner_name if self.placed is not None else self.model

    # ---- what the owner asks -----------------------------------------------------------------

    def set_state(self, new: ModelState, reason: str = "") -> None:
        """The one place a runner's state changes (reported as ``Changed``)."""
        old = self.state
        check_transition(old, new)
        self.state = new
        log.info("model %s: %s -> %s%s", self._name(), old, new, f" ({reason})" if reason else "")
        if new in (S.STOPPED, S.FAILED):
            self.placed = None  # the next start chooses again
        self._report(self, Changed(old, new, reason))

    def load(self, runner: Runner, spec: ModelSpec) -> None:
        """Starts its runner with ``spec`` (or wakes it, when asleep)."""
        self.placed = spec
        self.load_started = self._clock.now()
        self.set_state(ModelState.LOADING)
        self.task = asyncio.create_task(self._run_load(runner, spec), name=f"load {self._name()}")

    def stop(self, reason: str) -> None:
        """Stops its runner (waiting ``stop_grace`` for it before SIGKILL)."""
        self.disarm()
        self.unload_when_idle = None
        self.set_state(ModelState.UNLOADING, reason)
        self.task = asyncio.create_task(self._run_stop(), name=f"unload {self._name()}")

    def sleep(self, level: int, reason: str) -> None:
        """Puts its runner to sleep: its GPU memory is given back, its process stays."""
        self.disarm()
        self.set_state(S.SLEEPING, reason)
        self.slept_at = self._clock.now()
        self.asleep = None
        self.task = asyncio.create_task(self._run_sleep(level), name=f"sleep {self._name()}")

    def arm(self, seconds: float) -> None:
        """Its keep-alive runs out in ``seconds`` (reported as ``Expired``)."""
        self.disarm()
        when = self.expires_at = self._clock.now() + seconds
        self._expiry = self._clock.call_at(when, self._expire)

    def disarm(self) -> None:
        """Its keep-alive is not running (stopped if it was)."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.expires_at = None

    def exited(self, running: RunningModel, code: int) -> None:
        """``running`` exited with ``code``; a no-op unless it was its ready (or asleep)
        runner."""
        if self.running is not running or self.state not in (S.READY, S.SLEEPING):
            return  # stopped by us, or handled already
        if self._watcher is not None and self._watcher is not asyncio.current_task():
            self._watcher.cancel()
        self._watcher = None
        now = self._clock.now()
        lost = bool(getattr(running, "node_lost", False))  # a cluster's runner (cluster.remote)
        if not lost:
            self.crashes += 1
        self.restart_at = now + (0.0 if lost else backoff(self.crashes))
        self._report(self, Crashed(code, running.log_tail(), lost))
        self.running = None
        self.asleep = None
        self.generation = 0
        self.leases = 0
        self.disarm()
        self.set_state(ModelState.STOPPED, f"runner exited with {exit_name(code)}")

    async def close(self, grace: float) -> None:
        """Cancels its tasks and stops its runner (at server shutdown; reports nothing)."""
        self.disarm()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        running = self._detach()
        if running is not None:
            if grace > 0:
                await _save(running)
            await running.stop(grace)

    # ---- its tasks -----------------------------------------------------------------------------

    async def _run_load(self, runner: Runner, spec: ModelSpec) -> None:
        try:
            if self.running is not None:  # asleep
                running = self.running
                assert isinstance(running, Sleeper)
                await running.wake()
                if self.running is not running or self.state is not S.LOADING:
                    self.task = None
                    return  # stopped while waking
            else:
                running = await runner.start(spec)
                await self._restore(running)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            message = exc.message if isinstance(exc, ModelyardError) else repr(exc)
            took = self._clock.now() - self.load_started
            self._report(self, StartFailed(exc, message, took))
            if (asleep := self._detach()) is not None:  # it did not wake: stop it
                with contextlib.suppress(Exception):
                    await asleep.stop(self._stop_grace)
            self.task = None
            self.asleep = None
            self.set_state(ModelState.FAILED, message)
            return
        self.task = None
        woken = self.running is running
        self.running = running
        self.asleep = None
        self.generation = next(_generations)
        self.loaded_at = self.last_used = self._clock.now()
        # One process or two just started: measuring them takes well under a millisecond.
        measured = running.footprint()
        self._report(self, Started(measured, self.loaded_at - self.load_started, woken))
        if not woken:
            self._watcher = asyncio.create_task(self._watch(running), name=f"watch {self._name()}")
        self.set_state(ModelState.READY, "woken" if woken else "")

    async def _watch(self, running: RunningModel) -> None:
        self.exited(running, await running.wait())

    async def _run_stop(self) -> None:
        running = self._detach()
        if running is not None:
            try:
                await _save(running)
                await running.stop(self._stop_grace)
                code = await asyncio.wait_for(running.wait(), 1.0)
                self._report(self, Exited(code))
            except Exception:
                log.exception("stopping %s failed", self._name())
        self.task = None
        self.asleep = None
        self.generation = 0
        self.leases = 0
        self.set_state(ModelState.STOPPED)

    async def _run_sleep(self, level: int) -> None:
        running = self.running
        assert isinstance(running, Sleeper)
        try:
            await running.sleep(level)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.task = None
            if self.running is running and self.state is S.SLEEPING:
                message = exc.message if isinstance(exc, ModelyardError) else repr(exc)
                self._report(self, SleepFailed(message))
            return
        self.task = None
        if self.running is not running or self.state is not S.SLEEPING:
            return  # it exited meanwhile (handled as a crash)
        self.asleep = running.footprint()
        self._report(self, Slept())

    async def _restore(self, running: RunningModel) -> None:
        """Puts back what ``running``'s model kept at its last unload (warm swaps), if it
        keeps anything; a failure costs the conversations, never the load."""
        warm = warm_of(running)
        if warm is None:
            return
        warm.tell = self._warm_news
        try:
            await warm.restore()
        except asyncio.CancelledError:
            await asyncio.shield(running.stop(self._stop_grace))
            raise
        except Exception:
            log.exception("restoring the slots of %s failed", self._name())

    def _warm_news(self, news: KvNews) -> None:
        self._report(self, news)

    def _expire(self) -> None:
        self._expiry = None
        self._report(self, Expired())

    def _detach(self) -> RunningModel | None:
        """Forgets its runner (and stops watching it) to stop it: the runner, if any."""
        running, self.running = self.running, None
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        return running


async def _save(running: RunningModel) -> None:
    """Saves what ``running`` keeps across an unload (warm swaps), if it does; never fails."""
    warm = warm_of(running)
    if warm is not None:
        try:
            await warm.save()
        except Exception:
            log.exception("saving the slots of %s failed", running.base_url)
