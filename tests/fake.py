"""A fake runner and a manual clock, for scheduler and fault tests (no processes, no sleeps).

``FakeRunner`` starts ``FakeRunning`` models instantly (or when a test opens the gate), can be
told to fail a load, and records every start and stop; a ``FakeRunning`` can be put to sleep
and woken (vLLM's sleep mode). ``FakeRunning.crash`` makes a running
model exit on its own. ``ManualClock`` only moves when a test calls ``advance``.
``responder_binary`` runs the canned responder (a real process) as a model's engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import stat
import sys
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from modelyard.catalog.spec import Footprint, ModelSpec
from modelyard.errors import LoadFailedError
from modelyard.runners.gpu import Gpu
from modelyard.scheduler import UNSET, Lease, Scheduler, Unset


@dataclass(order=True)
class _Timer:
    when: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._timers: list[_Timer] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(when, next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        return timer

    def advance(self, seconds: float) -> None:
        """Moves time forward, firing due timers in order."""
        target = self._now + seconds
        while self._timers and self._timers[0].when <= target:
            timer = heapq.heappop(self._timers)
            self._now = max(self._now, timer.when)
            if not timer.cancelled:
                timer.callback()
        self._now = target


class FakeRunning:
    def __init__(self, spec: ModelSpec, footprint: Footprint) -> None:
        self.spec = spec
        self._footprint = footprint
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.stopped = False
        self.asleep = False
        self.sleeps: list[int] = []
        """The level of each time it was put to sleep."""
        self.wakes = 0
        self.fail_sleep: str | None = None
        self.fail_wake: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://fake/{self.spec.runner_name}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer key-of-{self.spec.name}"}

    def footprint(self) -> Footprint:
        """Its footprint; asleep, its RAM alone (vLLM's level 1 keeps the weights there)."""
        if self.asleep:
            return {"ram": self._footprint.get("ram", 0)}
        return self._footprint

    async def sleep(self, level: int) -> None:
        if self.fail_sleep:
            raise LoadFailedError(self.fail_sleep)
        self.asleep = True
        self.sleeps.append(level)

    async def wake(self) -> None:
        if self.fail_wake:
            raise LoadFailedError(self.fail_wake)
        self.asleep = False
        self.wakes += 1

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    async def stop(self, grace: float) -> None:
        self.stopped = True
        if not self._exited.done():
            self._exited.set_result(-15)

    def log_tail(self, max_bytes: int = 2000) -> str:
        return f"fake log of {self.spec.name}"

    def crash(self, code: int = -9) -> None:
        self._exited.set_result(code)


class FakeRunner:
    def __init__(
        self,
        sizes: dict[str, int] | None = None,
        default_size: int = 100,
        footprints: dict[str, Footprint] | None = None,
    ) -> None:
        self.sizes = sizes or {}
        self.default_size = default_size
        self.footprints = footprints or {}
        """Per model, a footprint on several devices (``{"ram": …, "gpu0": …}``)."""
        self.starts: list[str] = []
        self.running: dict[str, FakeRunning] = {}
        self.fail: dict[str, str] = {}
        self.unreadable: dict[str, str] = {}
        """Per model, why its files cannot be read: its estimate fails, as a corrupt GGUF's."""
        self.gate: asyncio.Event | None = None
        """When set, loads wait for it: a test can observe the ``loading`` state."""

    def estimate(self, spec: ModelSpec) -> Footprint:
        if spec.name in self.unreadable:
            raise LoadFailedError(self.unreadable[spec.name])
        return self._footprint(spec)

    def _footprint(self, spec: ModelSpec) -> Footprint:
        if spec.name in self.footprints:
            return dict(self.footprints[spec.name])
        return {"ram": self.sizes.get(spec.name, self.default_size)}

    async def start(self, spec: ModelSpec) -> FakeRunning:
        """Records and keys the runner by ``runner_name`` (``a``, a replica ``a@1``)."""
        self.starts.append(spec.runner_name)
        if self.gate is not None:
            await self.gate.wait()
        if spec.name in self.fail:
            raise LoadFailedError(self.fail[spec.name])
        running = FakeRunning(spec, self._footprint(spec))
        self.running[spec.runner_name] = running
        return running


class FakeGpus:
    """NVML as a test sets it: GPUs of ``totals`` bytes, and what each pid holds on them."""

    def __init__(self, totals: list[int]) -> None:
        self.totals = totals
        self.held: dict[int, dict[int, int]] = {}
        """pid → {GPU index: bytes}."""

    def devices(self) -> list[Gpu]:
        return [
            Gpu(i, f"Fake GPU {i}", total, sum(h.get(i, 0) for h in self.held.values()))
            for i, total in enumerate(self.totals)
        ]

    def used_by(self, pids: Collection[int]) -> dict[int, int]:
        found: dict[int, int] = {}
        for pid in pids:
            for index, amount in self.held.get(pid, {}).items():
                found[index] = found.get(index, 0) + amount
        return found


@contextlib.asynccontextmanager
async def leased(
    scheduler: Scheduler,
    name: str,
    keep_alive: float | Unset | None = UNSET,
    *,
    request: str = "",
) -> AsyncIterator[Lease]:
    """A lease of ``name`` for the ``with`` block, as a request holds one."""
    lease = await scheduler.acquire(name, keep_alive, request=request)
    try:
        yield lease
    finally:
        scheduler.release(lease)


async def settle(rounds: int = 20) -> None:
    """Lets every ready task run (no time passes)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


RESPONDER = Path(__file__).parents[1] / "bench" / "responder.py"
"""The canned OpenAI-compatible responder: the engine of tests that need no model."""


def responder_binary(directory: Path) -> Path:
    """The responder as an executable taking llama-server's flags (a model's ``llama_server``),
    run by this interpreter (no PATH needed)."""
    script = directory / "llama-server"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{RESPONDER}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script
