"""The dynamic batcher with a stand-in compute function: batching rules and result routing."""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from modelyard.clock import Timer
from modelyard.workers import batcher as batcher_module
from modelyard.workers.batcher import Batcher, plan_batches
from tests.fake import ManualClock, settle


def padded(costs: list[int], plan: list[list[int]], overhead: int) -> int:
    return sum(overhead + len(b) * max(costs[i] for i in b) for b in plan)


def test_plan_separates_short_inputs_from_long_ones() -> None:
    costs = [10, 200, 12, 190, 11, 205, 9, 199]
    plan = plan_batches(costs, max_batch=32, max_tokens=100_000, overhead=48)
    assert sorted(sorted(costs[i] for i in b) for b in plan) == [
        [9, 10, 11, 12],
        [190, 199, 200, 205],
    ]
    unbucketed = plan_batches(costs, max_batch=32, max_tokens=100_000, bucketing=False)
    assert unbucketed == [list(range(8))]
    assert padded(costs, plan, 48) < padded(costs, unbucketed, 48)


def test_plan_keeps_similar_lengths_together_in_one_batch() -> None:
    costs = [10, 12, 11, 14, 13]
    assert plan_batches(costs, max_batch=32, max_tokens=1000, overhead=48) == [[0, 2, 1, 4, 3]]


@pytest.mark.parametrize("bucketing", [True, False])
def test_plan_respects_limits_and_covers_every_input_once(bucketing: bool) -> None:
    rng = random.Random(7)
    for _ in range(200):
        costs = [rng.randint(1, 300) for _ in range(rng.randint(1, 70))]
        plan = plan_batches(costs, max_batch=8, max_tokens=1024, bucketing=bucketing)
        assert sorted(itertools.chain(*plan)) == list(range(len(costs)))
        for batch in plan:
            assert 1 <= len(batch) <= 8
            assert len(batch) == 1 or len(batch) * max(costs[i] for i in batch) <= 1024


def test_plan_is_optimal_for_small_inputs() -> None:
    # Brute force over every split of the sorted order agrees with the planner's cost.
    rng = random.Random(3)
    for _ in range(50):
        costs = sorted(rng.randint(1, 100) for _ in range(rng.randint(1, 8)))
        plan = plan_batches(costs, max_batch=4, max_tokens=10_000, overhead=30)
        best = min(
            padded(costs, split, 30)
            for split in _splits(list(range(len(costs))))
            if all(len(b) <= 4 for b in split)
        )
        assert padded(costs, plan, 30) == best


def test_plan_lets_an_over_budget_input_run_alone() -> None:
    assert plan_batches([5000, 10], max_batch=8, max_tokens=1000) == [[1], [0]]


def _splits(items: list[int]) -> list[list[list[int]]]:
    if not items:
        return [[]]
    result = []
    for cut in range(1, len(items) + 1):
        for rest in _splits(items[cut:]):
            result.append([items[:cut], *rest])
    return result


class Recorder:
    """A compute function that doubles numbers, remembers its batches, and can be held."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on: int | None = None

    def __call__(self, items: list[int]) -> list[int]:
        self.gate.wait(5)
        self.batches.append(list(items))
        if self.fail_on in items:
            raise ValueError(f"cannot compute {self.fail_on}")
        return [2 * x for x in items]


async def test_batcher_lone_request_does_not_wait() -> None:
    compute = Recorder()
    # A wait would never end: the manual clock does not move by itself.
    batcher = Batcher(compute, max_wait=30.0, clock=ManualClock())
    assert await asyncio.wait_for(batcher.submit([(21, 1)]), 5) == [42]
    assert await asyncio.wait_for(batcher.submit([(5, 1), (6, 1)]), 5) == [10, 12]
    assert compute.batches == [[21], [5, 6]]
    await batcher.close()


async def test_batcher_merges_concurrent_requests_and_routes_results() -> None:
    compute = Recorder()
    compute.gate.clear()  # the first batch blocks while the rest queue up
    batcher = Batcher(compute, max_batch=64, max_wait=0.0, clock=ManualClock())
    first = asyncio.create_task(batcher.submit([(0, 1)]))
    await settle()
    others = [asyncio.create_task(batcher.submit([(i, 1), (100 + i, 1)])) for i in range(1, 20)]
    await settle()
    compute.gate.set()
    assert await first == [0]
    for i, task in enumerate(others, start=1):
        assert await task == [2 * i, 2 * (100 + i)]
    assert [len(b) for b in compute.batches] == [1, 38]
    assert batcher.stats.requests == 20
    assert batcher.stats.largest_batch == 38
    await batcher.close()


async def test_batcher_waits_for_the_crowd_it_saw_lately() -> None:
    compute = Recorder()
    clock = ManualClock()
    batcher = Batcher(compute, max_batch=8, max_wait=0.005, clock=clock)
    compute.gate.clear()
    blocker = asyncio.create_task(batcher.submit([(0, 1)]))
    await settle()
    crowd = [asyncio.create_task(batcher.submit([(i, 1)])) for i in range(1, 5)]
    await settle()
    compute.gate.set()
    assert await blocker == [0]
    await settle()
    # Five requests were in flight at once: the four queued wait for the fifth to come back
    # (its client does not), until max_wait has passed.
    assert not any(t.done() for t in crowd)
    clock.advance(0.005)
    await asyncio.gather(*crowd)
    assert compute.batches[-1] == [1, 2, 3, 4]
    # Now they come back one after the other: the batcher holds them until all five are in.
    late = [asyncio.create_task(batcher.submit([(10, 1)]))]
    await settle()
    late.append(asyncio.create_task(batcher.submit([(11, 1)])))
    await settle()
    assert not any(t.done() for t in late)  # still filling: 2 of the 5 it expects
    late += [asyncio.create_task(batcher.submit([(i, 1)])) for i in (12, 13, 14)]
    assert await asyncio.wait_for(asyncio.gather(*late), 5) == [[20], [22], [24], [26], [28]]
    assert compute.batches[-1] == [10, 11, 12, 13, 14]
    # Two come back, the other three never do: the batch goes once max_wait has passed.
    more = [asyncio.create_task(batcher.submit([(i, 1)])) for i in (20, 21)]
    await settle()
    assert not any(t.done() for t in more)
    clock.advance(0.005)
    assert await asyncio.wait_for(asyncio.gather(*more), 5) == [[40], [42]]
    await batcher.close()


class EarlyTimers(ManualClock):
    """Timers that fire a millisecond before their time, as uvloop's may."""

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        return super().call_at(when - 0.001, callback)


async def test_batcher_wait_ends_when_its_timer_fires_even_a_little_early() -> None:
    compute = Recorder()
    clock = EarlyTimers()
    batcher = Batcher(compute, max_batch=8, max_wait=0.005, clock=clock)
    await asyncio.gather(*(batcher.submit([(i, 1)]) for i in range(4)))  # a crowd of four
    lone = asyncio.create_task(batcher.submit([(9, 1)]))
    await settle()
    assert not lone.done()  # waiting for the rest of the crowd
    clock.advance(0.0045)  # the timer fires; the clock says 0.5 ms are still left
    assert await asyncio.wait_for(lone, 5) == [18]
    await batcher.close()


async def test_batcher_forgets_an_old_crowd() -> None:
    compute = Recorder()
    clock = ManualClock()
    batcher = Batcher(compute, max_batch=8, max_wait=30.0, clock=clock)
    await asyncio.gather(*(batcher.submit([(i, 1)]) for i in range(4)))
    clock.advance(batcher_module.PEAK_WINDOW + 0.1)  # the crowd of four is old news
    assert await asyncio.wait_for(batcher.submit([(7, 1)]), 5) == [14]
    await batcher.close()


async def test_batcher_failure_reaches_only_its_batch() -> None:
    compute = Recorder()
    compute.fail_on = 13
    batcher = Batcher(compute, clock=ManualClock())
    with pytest.raises(ValueError, match="cannot compute 13"):
        await batcher.submit([(13, 1)])
    assert await batcher.submit([(4, 1)]) == [8]
    await batcher.close()


async def test_batcher_skips_requests_that_gave_up() -> None:
    compute = Recorder()
    compute.gate.clear()
    batcher = Batcher(compute, max_wait=0.0, clock=ManualClock())
    blocker = asyncio.create_task(batcher.submit([(1, 1)]))
    await settle()
    gone = asyncio.create_task(batcher.submit([(2, 1), (3, 1)]))
    stays = asyncio.create_task(batcher.submit([(4, 1)]))
    await settle()
    gone.cancel()
    compute.gate.set()
    assert await blocker == [2]
    assert await stays == [8]
    assert [2, 3] not in compute.batches
    assert all(2 not in b for b in compute.batches)
    await batcher.close()


async def test_batcher_with_one_lane_computes_on_the_thread_it_is_given() -> None:
    """The encoder worker loads its model on a thread and hands that thread over: torch's
    thread pool belongs to the thread that computed first."""
    thread = ThreadPoolExecutor(max_workers=1)
    loaded_on = thread.submit(threading.get_ident).result()
    seen: list[int] = []

    def compute(items: list[int]) -> list[int]:
        seen.append(threading.get_ident())
        return items

    batcher = Batcher(compute, max_wait=0.0, clock=ManualClock(), lanes=[thread])
    assert await batcher.submit([(1, 1)]) == [1]
    assert await batcher.submit([(2, 1), (3, 1)]) == [2, 3]
    assert set(seen) == {loaded_on}
    await batcher.close()
    with pytest.raises(RuntimeError):  # closed with the batcher
        thread.submit(int)


class Barrier:
    """A compute function whose batches wait until ``parties`` of them run at once."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=5)
        self.batches: list[list[int]] = []
        self.threads: set[int] = set()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.threads.add(threading.get_ident())
        self.barrier.wait()  # broken (an error) unless the other lane runs meanwhile
        return [2 * x for x in items]


async def test_batcher_runs_a_batch_on_every_lane_at_once() -> None:
    """Two lanes share the bounds: 16 queued inputs with max_batch 16 run as two batches of 8,
    at the same time, on the two lanes' threads."""
    compute = Barrier(2)
    lanes = [ThreadPoolExecutor(max_workers=1) for _ in range(2)]
    batcher = Batcher(compute, max_batch=16, max_wait=0.0, clock=ManualClock(), lanes=lanes)
    answer = await asyncio.wait_for(batcher.submit([(i, 1) for i in range(16)]), 10)
    assert answer == [2 * i for i in range(16)]
    assert sorted(len(b) for b in compute.batches) == [8, 8]
    assert len(compute.threads) == 2
    await batcher.close()


async def test_batcher_lanes_share_the_token_bound_and_serve_every_request() -> None:
    calls: list[list[int]] = []
    running = 0
    most = 0
    lock = threading.Lock()

    def compute(items: list[int]) -> list[int]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            calls.append(list(items))
        threading.Event().wait(0.002)
        with lock:
            running -= 1
        return [2 * x for x in items]

    lanes = [ThreadPoolExecutor(max_workers=1) for _ in range(2)]
    batcher = Batcher(
        compute, max_batch=32, max_tokens=400, max_wait=0.0, clock=ManualClock(), lanes=lanes
    )
    requests = [[(10 * r + i, 50) for i in range(r % 5 + 1)] for r in range(30)]
    answers = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(items) for items in requests)), 10
    )
    assert answers == [[2 * x for x, _ in items] for items in requests]
    assert most <= 2
    assert all(len(batch) * 50 <= 200 for batch in calls)  # 400 tokens shared by two lanes
    await batcher.close()
