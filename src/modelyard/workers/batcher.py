"""Dynamic batching: concurrent requests share forward passes, each gets its own results.

Requests put their inputs (with a cost: their length in tokens) into one queue; a single
loop takes everything queued, cuts it into batches and runs them one after another on one
worker thread. Three rules keep a lone request fast and a crowd efficient:

- **No wait when idle.** The loop waits for a batch to fill only while the load says more
  requests are coming: until as many requests are queued as were in flight at once lately
  (the peak over the last second, so a single client never waits), and never longer than
  ``max_wait``. Without that wait, a crowd degrades into small batches: the requests
  answered by one batch are still on their way back when the next batch starts. Only
  requests queued count, not those answered but not yet resumed: counting those, 16
  clients settled into alternate batches of 5 and 11, and MiniLM embedded 404-448
  sentences/s instead of 457-489 in batches of 16 (docs/benchmarks.md, B8).
- **Length buckets.** Inputs are sorted by length and cut where padding would cost more than
  another forward pass: ``plan_batches`` minimises the padded tokens plus a fixed
  per-batch overhead, so eight-word sentences are not padded to two hundred words.
- **Bounded batches.** At most ``max_batch`` inputs and ``max_tokens`` padded tokens per
  forward pass (an input longer than that runs alone).

A model whose forward pass runs without Python's lock (ONNX Runtime) may run several batches
at once, one per *lane* (a thread each). The bounds are then shared: each lane's batch holds
at most ``max_batch`` and ``max_tokens`` divided by the lanes, so all batches in flight
together hold no more than one full batch (what the memory estimate counts). What is queued
is spread over the free lanes (16 inputs, two lanes: two batches of 8, at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from modelyard.clock import Clock, LoopClock

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# How long a peak of concurrent requests is remembered as the crowd to wait for.
PEAK_WINDOW = 1.0
# One forward pass costs about as much as this many extra padded tokens (MiniLM on two CPU
# threads: ~8 ms fixed, ~0.2 ms per token).
DEFAULT_OVERHEAD_TOKENS = 48


def plan_batches(
    costs: Sequence[int],
    *,
    max_batch: int,
    max_tokens: int,
    overhead: int = DEFAULT_OVERHEAD_TOKENS,
    bucketing: bool = True,
) -> list[list[int]]:
    """Indices of ``costs`` grouped into batches, cheapest plan first.

    With ``bucketing``, inputs are ordered by length and split where the padded size
    (inputs times longest) plus ``overhead`` per batch is least; without, batches are taken in
    arrival order.
    """
    n = len(costs)
    if n == 0:
        return []
    if not bucketing:
        return _greedy(list(range(n)), costs, max_batch, max_tokens)
    order = sorted(range(n), key=lambda i: costs[i])
    best = [0] + [-1] * n  # best[i]: least cost of batching the i shortest inputs
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        longest = costs[order[end - 1]]
        for start in range(end - 1, max(-1, end - 1 - max_batch), -1):
            size = end - start
            if size > 1 and size * longest > max_tokens:
                break
            total = best[start] + overhead + size * longest
            if best[end] < 0 or total < best[end]:
                best[end], cut[end] = total, start
    batches = []
    end = n
    while end > 0:
        batches.append(order[cut[end] : end])
        end = cut[end]
    batches.reverse()
    return batches


def _greedy(
    indices: list[int], costs: Sequence[int], max_batch: int, max_tokens: int
) -> list[list[int]]:
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in indices:
        widest = max(longest, costs[i])
        if current and (len(current) >= max_batch or (len(current) + 1) * widest > max_tokens):
            batches.append(current)
            current, widest = [], costs[i]
        current.append(i)
        longest = widest
    if current:
        batches.append(current)
    return batches


@dataclass
class BatchStats:
    """What the batcher has done since it started (served at the worker's ``/stats``)."""

    requests: int = 0
    inputs: int = 0
    batches: int = 0
    largest_batch: int = 0
    padded_tokens: int = 0
    real_tokens: int = 0
    busy_seconds: float = 0.0
    """Time spent computing batches, summed over lanes (busy / elapsed / lanes = how loaded
    the model is)."""
    sizes: dict[int, int] = field(default_factory=dict)
    """Batch size → how many batches had that size."""

    def record(self, costs: Sequence[int], seconds: float) -> None:
        self.batches += 1
        self.busy_seconds += seconds
        self.inputs += len(costs)
        self.largest_batch = max(self.largest_batch, len(costs))
        self.padded_tokens += len(costs) * max(costs)
        self.real_tokens += sum(costs)
        self.sizes[len(costs)] = self.sizes.get(len(costs), 0) + 1


@dataclass
class _Job(Generic[T, R]):
    item: T
    cost: int
    request: int
    arrived: float
    future: asyncio.Future[R]


class Batcher(Generic[T, R]):
    """Runs ``compute`` over batches of queued items; ``submit`` awaits its own.

    ``lanes`` are the threads batches run on, one batch per lane at a time (one new thread
    when not given). The first is the thread the model was loaded on (see ``encoder.main``):
    a model with one lane computes on that thread only. The batcher shuts them down on
    ``close``.
    """

    def __init__(
        self,
        compute: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = 32,
        max_wait: float = 0.005,
        max_tokens: int = 16384,
        overhead: int = DEFAULT_OVERHEAD_TOKENS,
        bucketing: bool = True,
        clock: Clock | None = None,
        lanes: Sequence[ThreadPoolExecutor] = (),
    ) -> None:
        self._compute = compute
        self._clock: Clock = clock or LoopClock()
        self._lanes = list(lanes) or [ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")]
        self._free = list(range(len(self._lanes)))
        """Indices of the lanes not computing."""
        self._running: set[asyncio.Task[None]] = set()
        self._max_batch = max_batch
        self._lane_batch = max(1, -(-max_batch // len(self._lanes)))
        self._lane_tokens = max(1, max_tokens // len(self._lanes))
        self._max_wait = max_wait
        self._overhead = overhead
        self._bucketing = bucketing
        self._pending: list[_Job[T, R]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._queued = 0
        self._peak = 0
        self._peak_since = 0.0
        self._next_request = 0
        self.stats = BatchStats()

    async def submit(self, items: Sequence[tuple[T, int]]) -> list[R]:
        """Results for ``items`` (each ``(item, cost)``), in order."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="batcher")
        loop = asyncio.get_running_loop()
        now = self._clock.now()
        self._next_request += 1
        jobs = [
            _Job(item, cost, self._next_request, now, loop.create_future()) for item, cost in items
        ]
        self._pending.extend(jobs)
        self.stats.requests += 1
        self._in_flight += 1
        self._queued += 1
        if self._in_flight >= self._peak or now - self._peak_since > PEAK_WINDOW:
            self._peak, self._peak_since = self._in_flight, now
        self._wake.set()
        try:
            # Cancelling this (the client went away) cancels the futures; the loop skips them.
            return list(await asyncio.gather(*(job.future for job in jobs)))
        finally:
            self._in_flight -= 1

    async def close(self) -> None:
        for task in [self._task, *self._running]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for lane in self._lanes:
            lane.shutdown(wait=False, cancel_futures=True)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not (self._pending and self._free):
                self._wake.clear()
                await self._wake.wait()
            await self._fill()
            jobs, self._pending, self._queued = self._pending, [], 0
            # Spread over the free lanes: 16 inputs and two lanes make two batches of 8.
            per_lane = min(self._lane_batch, -(-len(jobs) // len(self._free)))
            plan = plan_batches(
                [job.cost for job in jobs],
                max_batch=per_lane,
                max_tokens=self._lane_tokens,
                overhead=self._overhead,
                bucketing=self._bucketing,
            )
            for indices in plan:
                batch = [jobs[i] for i in indices if not jobs[i].future.done()]
                if not batch:
                    continue
                while not self._free:
                    self._wake.clear()
                    await self._wake.wait()
                lane = self._free.pop(0)
                task = asyncio.create_task(self._run(loop, lane, batch))
                self._running.add(task)
                task.add_done_callback(self._freed(lane))

    def _freed(self, lane: int) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            self._running.discard(task)
            self._free.append(lane)
            self._free.sort()  # the first lane (the model's own thread) is taken first
            self._wake.set()

        return done

    async def _fill(self) -> None:
        """Waits while the recent crowd is still arriving (never for a lone client)."""
        now = self._clock.now()
        if now - self._peak_since > PEAK_WINDOW:
            self._peak, self._peak_since = self._in_flight, now
        target = min(self._peak, self._max_batch)
        if self._queued >= target or self._max_wait <= 0:
            return
        # The timer firing ends the wait, not a look at the clock: uvloop's timers have
        # millisecond resolution and may fire just before ``now()`` reaches their time; a
        # wait that compared the two would then sleep until the next request came.
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            self._wake.set()

        timer = self._clock.call_at(now + self._max_wait, expire)
        try:
            while self._queued < target and not expired:
                self._wake.clear()
                await self._wake.wait()
        finally:
            timer.cancel()

    async def _run(
        self, loop: asyncio.AbstractEventLoop, lane: int, batch: list[_Job[T, R]]
    ) -> None:
        costs = [job.cost for job in batch]
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(
                self._lanes[lane], self._compute, [job.item for job in batch]
            )
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
        except Exception as exc:
            log.exception("batch of %d failed", len(batch))
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        elapsed = time.perf_counter() - started
        self.stats.record(costs, elapsed)
        log.debug(
            "batch of %d (%d tokens padded to %d) in %.1f ms",
            len(batch),
            sum(costs),
            len(batch) * max(costs),
            elapsed * 1000,
        )
        for job, result in zip(batch, results, strict=True):
            if not job.future.done():
                job.future.set_result(result)
