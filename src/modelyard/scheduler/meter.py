"""Measuring runners: what each holds, on a timer (``measure_interval``), in a thread, never
on the request path and never by a query."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from modelyard.catalog.spec import Footprint
from modelyard.clock import Clock, Timer
from modelyard.quantity import format_size
from modelyard.scheduler.budget import MemoryLedger
from modelyard.scheduler.model import Model
from modelyard.scheduler.replica import Replica
from modelyard.scheduler.state import ModelState as S

log = logging.getLogger(__name__)


def record(ledger: MemoryLedger, m: Model, r: Replica, footprint: Footprint) -> None:
    """Counts a measurement of ``r``: its peak counts from then on; growth past its estimate
    is reported once."""
    spec = m.run_spec(r)
    peak = ledger.record(spec, footprint)
    if peak is None or m.spec.memory is not None or m.over_estimate:
        return
    share = ledger.estimate_or_empty(spec)
    over = {d: n for d, n in peak.items() if share.get(d) and n > share[d] * 1.1}
    if over:
        m.over_estimate = True
        parts = ", ".join(
            f"{format_size(n)} of {d} (estimated {format_size(share[d])})" for d, n in over.items()
        )
        log.warning("model %s grew past its estimate: %s", m.spec.name, parts)


class Meter:
    """Measures every ready or sleeping runner of ``models()`` each ``interval`` seconds
    (0: only when asked), then calls ``measured`` to act on what it found."""

    def __init__(
        self,
        clock: Clock,
        interval: float,
        ledger: MemoryLedger,
        models: Callable[[], Iterable[Model]],
        measured: Callable[[], None],
    ) -> None:
        self._clock = clock
        self._interval = interval
        self._ledger = ledger
        self._models = models
        self._measured = measured
        self._timer: Timer | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        """Measures each ``interval`` from now on."""
        if self._interval > 0 and self._timer is None and not self._closed:
            self._timer = self._clock.call_at(self._clock.now() + self._interval, self._tick)

    async def measure(self) -> None:
        """Measures every running runner now (in a thread), then calls ``measured``."""
        targets = [
            (m, r, r.running, r.state)
            for m in self._models()
            for r in m.replicas
            if r.running is not None and (r.state is S.READY or r.sleeping)
        ]

        def sample() -> list[Footprint]:
            return [running.footprint() for _, _, running, _ in targets]

        footprints = await asyncio.to_thread(sample)
        for (m, r, running, state), footprint in zip(targets, footprints, strict=True):
            if r.running is not running or r.state is not state:
                continue
            if state is S.READY:
                record(self._ledger, m, r, footprint)
            elif r.sleeping:
                r.asleep = footprint
        await asyncio.to_thread(self._ledger.flush)
        self._measured()

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()

    def _tick(self) -> None:
        self._timer = None
        if self._closed:
            return

        async def run() -> None:
            try:
                await self.measure()
            except Exception:
                log.exception("measuring runners failed")
            finally:
                self._task = None
                self.start()

        self._task = asyncio.create_task(run(), name="measure runners")
