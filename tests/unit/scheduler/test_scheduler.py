"""The scheduler driven by a fake runner and a manual clock: no processes, no sleeps."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from modelyard.catalog.catalog import Catalog
from modelyard.catalog.spec import ModelSpec
from modelyard.errors import (
    DoesNotFitError,
    LoadFailedError,
    ModelNotFoundError,
    QueueFullError,
    QueueTimeoutError,
)
from modelyard.scheduler import Listed, ModelState, Scheduler
from modelyard.scheduler.event import (
    Event,
    Evicted,
    KeepAliveExpired,
    StateChanged,
)
from tests.fake import FakeRunner, ManualClock, leased, settle

BASE = ModelSpec(name="", path=Path("/models/x.gguf"), parallel=2, max_queue=4)


def spec(name: str, **kw: object) -> ModelSpec:
    return replace(BASE, name=name, **kw)  # type: ignore[arg-type]


def make(
    *specs: ModelSpec,
    budget: int = 1000,
    sizes: dict[str, int] | None = None,
    min_residency: float = 0.0,
    max_loaded: dict[str, int] | None = None,
) -> tuple[Scheduler, FakeRunner, ManualClock, list[Event]]:
    runner = FakeRunner(sizes)
    clock = ManualClock()
    scheduler = Scheduler(
        Catalog(specs),
        {"llamacpp": runner},
        {"ram": budget},
        clock=clock,
        min_residency=min_residency,
        max_loaded=max_loaded,
    )
    events: list[Event] = []
    scheduler.subscribe(events.append)
    return scheduler, runner, clock, events


def states(events: list[Event], model: str) -> list[str]:
    return [e.new for e in events if isinstance(e, StateChanged) and e.model == model]


async def test_scheduler_cold_model_loads_and_grants() -> None:
    scheduler, runner, _, events = make(spec("a"))
    lease = await scheduler.acquire("a")
    assert lease.base_url == "http://fake/a"
    assert runner.starts == ["a"]
    assert states(events, "a") == ["loading", "ready"]
    scheduler.release(lease)


async def test_scheduler_concurrent_requests_share_one_load() -> None:
    scheduler, runner, _, _ = make(spec("a", parallel=8, max_queue=16))
    runner.gate = asyncio.Event()
    tasks = [asyncio.create_task(scheduler.acquire("a")) for _ in range(8)]
    await settle()
    assert scheduler.state("a") is ModelState.LOADING
    runner.gate.set()
    leases = await asyncio.gather(*tasks)
    assert runner.starts == ["a"]
    assert len(leases) == 8
    for lease in leases:
        scheduler.release(lease)


async def test_scheduler_grants_a_ready_models_free_slot_without_waiting() -> None:
    """A request that nobody waits before, to a ready model with a free slot, gets its lease
    at once: the acquire returns without giving the event loop a turn."""
    scheduler, _, _, _ = make(spec("a", parallel=2))
    scheduler.release(await scheduler.acquire("a"))  # loaded
    pending = scheduler.acquire("a", request="r2")
    with pytest.raises(StopIteration) as done:
        pending.send(None)
    lease = done.value.value
    assert lease.base_url == "http://fake/a"
    assert lease.queued == 0
    # The second slot too; a third request waits its turn, and gets the first freed slot.
    second = await scheduler.acquire("a")
    third = asyncio.create_task(scheduler.acquire("a"))
    await settle()
    assert not third.done()
    scheduler.release(lease)
    assert (await third).base_url == "http://fake/a"
    scheduler.release(second)


async def test_scheduler_resolves_aliases() -> None:
    scheduler, runner, _, _ = make(spec("a", aliases=("alpha",)))
    async with leased(scheduler, "alpha") as lease:
        assert lease.model == "a"
    assert runner.starts == ["a"]


async def test_scheduler_limits_concurrency_to_parallel() -> None:
    scheduler, _, _, _ = make(spec("a", parallel=2))
    first, second = await scheduler.acquire("a"), await scheduler.acquire("a")
    third = asyncio.create_task(scheduler.acquire("a"))
    await settle()
    assert not third.done()
    scheduler.release(first)
    await settle()
    assert third.done()
    scheduler.release(second)
    scheduler.release(third.result())


async def test_scheduler_queue_full_is_429_with_retry_after() -> None:
    scheduler, _, _, _ = make(spec("a", parallel=1, max_queue=2))
    held = await scheduler.acquire("a")
    waiting = [asyncio.create_task(scheduler.acquire("a")) for _ in range(2)]
    await settle()
    with pytest.raises(QueueFullError) as info:
        await scheduler.acquire("a")
    assert info.value.status == 429
    assert info.value.retry_after is not None
    assert info.value.retry_after >= 1
    scheduler.release(held)
    for task in waiting:
        scheduler.release(await task)


async def test_scheduler_queue_timeout_is_503() -> None:
    scheduler, _, clock, _ = make(spec("a", parallel=1, queue_timeout=30.0))
    held = await scheduler.acquire("a")
    waiting = asyncio.create_task(scheduler.acquire("a"))
    await settle()
    clock.advance(29)
    await settle()
    assert not waiting.done()
    clock.advance(2)
    with pytest.raises(QueueTimeoutError) as info:
        await waiting
    assert info.value.status == 503
    assert info.value.retry_after is not None
    scheduler.release(held)


async def test_scheduler_client_leaving_queue_starts_nothing() -> None:
    # b waits for memory held by a busy a; b's client leaves; a is released: b never loads.
    scheduler, runner, _, _ = make(spec("a"), spec("b"), budget=150)
    held = await scheduler.acquire("a")
    waiting = asyncio.create_task(scheduler.acquire("b"))
    await settle()
    waiting.cancel()
    await settle()
    scheduler.release(held)
    await settle()
    assert runner.starts == ["a"]
    assert scheduler.state("a") is ModelState.READY
    assert scheduler.state("b") is ModelState.STOPPED


@pytest.mark.parametrize("same_turn", [False, True])
async def test_scheduler_client_leaving_slot_queue_frees_its_place(same_turn: bool) -> None:
    # same_turn: the slot frees before the cancelled waiter's task has run to forget it; it
    # must be skipped, not granted (a lease nobody would return).
    scheduler, _, _, _ = make(spec("a", parallel=1))
    held = await scheduler.acquire("a")
    gone = asyncio.create_task(scheduler.acquire("a"))
    stays = asyncio.create_task(scheduler.acquire("a"))
    await settle()
    gone.cancel()
    if not same_turn:
        await settle()
    scheduler.release(held)
    await settle()
    assert gone.cancelled()
    assert stays.done()
    assert [s.in_flight for s in scheduler.status()] == [1]
    scheduler.release(stays.result())
    assert [s.in_flight for s in scheduler.status()] == [0]


async def test_scheduler_model_bigger_than_budget_is_507_at_once() -> None:
    scheduler, runner, _, _ = make(spec("big"), budget=1000, sizes={"big": 5000})
    with pytest.raises(DoesNotFitError) as info:
        await scheduler.acquire("big")
    assert info.value.status == 507
    assert "big" in info.value.message
    assert "budget" in info.value.message
    assert runner.starts == []


async def test_scheduler_unreadable_model_shows_failed_with_its_reason_until_it_loads() -> None:
    scheduler, runner, _, events = make(spec("bad"))
    runner.unreadable["bad"] = "cannot read /models/x.gguf: not a GGUF file"
    for _ in range(2):
        with pytest.raises(LoadFailedError):
            await scheduler.acquire("bad")
    (status,) = scheduler.status()
    assert status.state is ModelState.FAILED
    assert status.last_error == "cannot read /models/x.gguf: not a GGUF file"
    assert [type(e).__name__ for e in events].count("LoadFailed") == 1  # one per reason
    assert runner.starts == []
    del runner.unreadable["bad"]  # the file is fixed: a retry reads it again and loads
    async with leased(scheduler, "bad"):
        pass
    (status,) = scheduler.status()
    assert (status.state, status.last_error) == (ModelState.READY, None)


async def test_scheduler_unload_clears_an_unreadable_models_failure() -> None:
    scheduler, runner, _, _ = make(spec("bad"))
    runner.unreadable["bad"] = "not a GGUF file"
    with pytest.raises(LoadFailedError):
        await scheduler.acquire("bad")
    await scheduler.unload("bad")
    assert scheduler.status()[0].state is ModelState.STOPPED


async def test_scheduler_keep_alive_unloads_when_expired() -> None:
    scheduler, runner, clock, events = make(spec("a", keep_alive=300.0))
    async with leased(scheduler, "a"):
        pass
    clock.advance(299)
    await settle()
    assert scheduler.state("a") is ModelState.READY
    clock.advance(2)
    await settle()
    assert scheduler.state("a") is ModelState.STOPPED
    assert runner.running["a"].stopped
    assert any(isinstance(e, KeepAliveExpired) for e in events)


async def test_scheduler_keep_alive_not_counted_while_busy() -> None:
    scheduler, _, clock, _ = make(spec("a", keep_alive=10.0))
    lease = await scheduler.acquire("a")
    clock.advance(100)
    await settle()
    assert scheduler.state("a") is ModelState.READY
    scheduler.release(lease)
    clock.advance(9)
    await settle()
    assert scheduler.state("a") is ModelState.READY


async def test_scheduler_request_keep_alive_zero_unloads_after_request() -> None:
    scheduler, _, _, _ = make(spec("a"))
    async with leased(scheduler, "a", keep_alive=0):
        assert scheduler.state("a") is ModelState.READY
    await settle()
    assert scheduler.state("a") is ModelState.STOPPED


async def test_scheduler_request_keep_alive_forever() -> None:
    scheduler, _, clock, _ = make(spec("a", keep_alive=5.0))
    async with leased(scheduler, "a", keep_alive=None):
        pass
    clock.advance(10**6)
    await settle()
    assert scheduler.state("a") is ModelState.READY
    assert scheduler.status()[0].expires_at is None


async def test_scheduler_swaps_idle_model_for_new_one() -> None:
    scheduler, runner, _, events = make(spec("a"), spec("b"), budget=150)
    async with leased(scheduler, "a"):
        pass
    async with leased(scheduler, "b"):
        assert scheduler.state("a") is ModelState.STOPPED
        assert scheduler.state("b") is ModelState.READY
    assert runner.starts == ["a", "b"]
    assert [e.model for e in events if isinstance(e, Evicted)] == ["a"]


async def test_scheduler_never_evicts_busy_model() -> None:
    scheduler, runner, _, _ = make(spec("a"), spec("b"), budget=150)
    held = await scheduler.acquire("a")
    waiting = asyncio.create_task(scheduler.acquire("b"))
    await settle()
    assert runner.starts == ["a"]
    assert scheduler.state("a") is ModelState.READY
    scheduler.release(held)
    lease = await waiting
    assert scheduler.state("a") is ModelState.STOPPED
    scheduler.release(lease)


async def test_scheduler_evicts_nearest_expiry() -> None:
    scheduler, _, clock, _ = make(
        spec("a", keep_alive=100.0), spec("b", keep_alive=50.0), spec("c"), budget=250
    )
    async with leased(scheduler, "a"):
        pass
    async with leased(scheduler, "b"):
        pass
    clock.advance(1)
    async with leased(scheduler, "c"):
        assert scheduler.state("b") is ModelState.STOPPED
        assert scheduler.state("a") is ModelState.READY


async def test_scheduler_never_evicts_pinned() -> None:
    scheduler, runner, clock, _ = make(
        spec("p", pinned=True), spec("b", queue_timeout=5.0), budget=150
    )
    await scheduler.load("p")
    waiting = asyncio.create_task(scheduler.acquire("b"))
    await settle()
    clock.advance(6)
    with pytest.raises(QueueTimeoutError):
        await waiting
    assert runner.starts == ["p"]
    assert scheduler.state("p") is ModelState.READY


async def test_scheduler_pin_at_run_time_keeps_and_unpin_lets_go() -> None:
    scheduler, runner, clock, _ = make(spec("a", keep_alive=10.0), spec("b"), budget=150)
    await scheduler.load("a")
    scheduler.pin("a", True)
    clock.advance(100)  # no keep-alive expiry while pinned
    await settle()
    assert scheduler.state("a") is ModelState.READY
    waiting = asyncio.create_task(scheduler.acquire("b"))
    await settle()
    assert not waiting.done()  # b waits: a is not evicted for it
    scheduler.pin("a", False)  # now a is idle and unpinned: evicted for b
    lease = await waiting
    assert runner.starts == ["a", "b"]
    assert scheduler.state("a") is ModelState.STOPPED
    scheduler.release(lease)
    [status] = [s for s in scheduler.status() if s.name == "a"]
    assert not status.pinned


async def test_scheduler_serves_loaded_model_queue_before_swapping() -> None:
    scheduler, runner, _, _ = make(spec("a", parallel=1), spec("b"), budget=150)
    held = await scheduler.acquire("a")
    queued_a = asyncio.create_task(scheduler.acquire("a"))
    queued_b = asyncio.create_task(scheduler.acquire("b"))
    await settle()
    scheduler.release(held)
    await settle()
    assert queued_a.done()
    assert not queued_b.done()
    scheduler.release(queued_a.result())
    scheduler.release(await queued_b)
    assert runner.starts == ["a", "b"]


async def test_scheduler_min_residency_delays_eviction() -> None:
    scheduler, runner, clock, _ = make(spec("a"), spec("b"), budget=150, min_residency=2.0)
    async with leased(scheduler, "a"):
        pass
    waiting = asyncio.create_task(scheduler.acquire("b"))
    await settle()
    assert runner.starts == ["a"]
    clock.advance(2.5)
    scheduler.release(await waiting)
    assert runner.starts == ["a", "b"]


async def test_scheduler_crash_then_next_request_restarts() -> None:
    scheduler, runner, _, events = make(spec("a"))
    lease = await scheduler.acquire("a")
    runner.running["a"].crash()
    await settle()
    assert scheduler.state("a") is ModelState.STOPPED
    scheduler.release(lease)  # an old lease: harmless
    async with leased(scheduler, "a") as again:
        assert again.generation != lease.generation
    assert runner.starts == ["a", "a"]
    assert states(events, "a") == ["loading", "ready", "stopped", "loading", "ready"]
    assert [s.in_flight for s in scheduler.status()] == [0]


async def test_scheduler_crashing_runner_restarts_later_and_requests_wait() -> None:
    scheduler, runner, clock, _ = make(spec("a"))
    for _ in range(2):  # two crashes in a row, nothing served in between
        lease = await scheduler.acquire("a")
        runner.running["a"].crash()
        await settle()
        scheduler.release(lease)
    assert runner.starts == ["a", "a"]
    waiting = asyncio.create_task(scheduler.acquire("a"))
    await settle()
    assert not waiting.done()  # waits for the restart delay, does not fail
    assert runner.starts == ["a", "a"]
    clock.advance(1.0)
    await settle()
    lease = await waiting
    assert runner.starts == ["a", "a", "a"]
    scheduler.release(lease, served=True)  # it served one: not crashing over and over
    again = await scheduler.acquire("a")
    runner.running["a"].crash()
    await settle()
    scheduler.release(again)
    async with leased(scheduler, "a"):  # the first crash since: restarted at once
        assert runner.starts == ["a"] * 4


async def test_scheduler_runner_unreachable_handles_the_exit_at_once() -> None:
    scheduler, runner, _, _ = make(spec("a"))
    lease = await scheduler.acquire("a")
    running = runner.running["a"]
    running._exited.set_result(-9)  # exited; the watcher task has not run yet
    assert await scheduler.runner_unreachable(lease)
    assert scheduler.state("a") is ModelState.STOPPED
    scheduler.release(lease)
    async with leased(scheduler, "a"):
        assert runner.starts == ["a", "a"]


async def test_scheduler_runner_unreachable_but_alive_is_not_gone() -> None:
    scheduler, _, _, _ = make(spec("a"))
    lease = await scheduler.acquire("a")
    assert not await scheduler.runner_unreachable(lease, grace=0.01)
    assert scheduler.state("a") is ModelState.READY
    scheduler.release(lease)


async def test_scheduler_queue_timeout_none_waits_forever() -> None:
    scheduler, _, clock, _ = make(spec("a", parallel=1, queue_timeout=None))
    held = await scheduler.acquire("a")
    waiting = asyncio.create_task(scheduler.acquire("a"))
    await settle()
    clock.advance(10**9)
    await settle()
    assert not waiting.done()
    scheduler.release(held)
    scheduler.release(await waiting)


async def test_scheduler_memory_pressure_evicts_idle_models() -> None:
    scheduler, runner, _, events = make(spec("a"), spec("b"), spec("c"), budget=1000)
    for name in ("a", "b", "c"):
        scheduler.release(await scheduler.acquire(name))
    busy = await scheduler.acquire("c")
    # Each estimated at 100; "a" and "c" grow (prompt caches, batches) past the budget.
    runner.running["a"]._footprint = {"ram": 600}
    runner.running["c"]._footprint = {"ram": 450}
    await scheduler.measure()
    await settle()
    assert {e.model for e in events if isinstance(e, Evicted)} == {"a"}  # idle; "c" is busy
    assert scheduler.state("a") is ModelState.STOPPED
    assert scheduler.state("c") is ModelState.READY
    assert scheduler.reserved() == {"ram": 550}
    scheduler.release(busy)


async def test_scheduler_prepare_reads_estimates_off_the_event_loop() -> None:
    import threading

    scheduler, runner, _, _ = make(spec("a"), spec("b"))
    threads: list[str] = []
    estimate = runner.estimate

    def recording(model: ModelSpec) -> dict[str, int]:
        threads.append(threading.current_thread().name)
        return dict(estimate(model))

    runner.estimate = recording  # type: ignore[method-assign]
    await scheduler.prepare()
    assert len(threads) == 2
    assert threading.main_thread().name not in threads
    async with leased(scheduler, "a"):
        pass
    assert len(threads) == 2  # the request used what prepare computed


async def test_scheduler_load_failure_fails_waiters_then_backs_off() -> None:
    scheduler, runner, clock, _ = make(spec("a"))
    runner.fail["a"] = "boom: bad file"
    for _ in range(2):
        with pytest.raises(LoadFailedError, match="boom: bad file"):
            await scheduler.acquire("a")
    assert scheduler.state("a") is ModelState.FAILED
    assert runner.starts == ["a", "a"]
    # Two failures in a row: the next attempt within the back-off fails without a start.
    with pytest.raises(LoadFailedError, match="backing off") as info:
        await scheduler.acquire("a")
    assert info.value.retry_after is not None
    assert runner.starts == ["a", "a"]
    del runner.fail["a"]
    clock.advance(1.5)
    async with leased(scheduler, "a"):
        assert scheduler.state("a") is ModelState.READY
    assert scheduler.status()[0].last_error is None


async def test_scheduler_unload_waits_for_in_flight() -> None:
    scheduler, _, _, _ = make(spec("a"))
    lease = await scheduler.acquire("a")
    await scheduler.unload("a")
    assert scheduler.state("a") is ModelState.READY
    scheduler.release(lease)
    await settle()
    assert scheduler.state("a") is ModelState.STOPPED


async def test_scheduler_status_reports_queue_and_memory() -> None:
    scheduler, _, _, _ = make(spec("a", parallel=1), budget=1000, sizes={"a": 300})
    held = await scheduler.acquire("a")
    waiting = asyncio.create_task(scheduler.acquire("a"))
    await settle()
    (status,) = scheduler.status()
    assert (status.state, status.in_flight, status.queued) == ("ready", 1, 1)
    assert status.estimate == {"ram": 300}
    assert status.measured == {"ram": 300}
    assert scheduler.reserved() == {"ram": 300}
    scheduler.release(held)
    scheduler.release(await waiting)


async def test_scheduler_counts_a_model_at_the_most_it_used() -> None:
    scheduler, runner, _, _ = make(spec("a"), spec("b"), budget=1000, sizes={"a": 300})
    async with leased(scheduler, "a"):
        runner.running["a"]._footprint = {"ram": 700}  # a full batch of activations
    assert scheduler.status()[0].measured == {"ram": 300}  # a query only reads
    await scheduler.measure()
    assert scheduler.status()[0].measured == {"ram": 700}
    runner.running["a"]._footprint = {"ram": 320}  # freed again, but it may come back
    await scheduler.measure()
    assert scheduler.status()[0].measured == {"ram": 700}
    assert scheduler.reserved() == {"ram": 700}


async def test_scheduler_close_stops_runners_and_fails_waiters() -> None:
    scheduler, runner, _, _ = make(spec("a", parallel=1))
    held = await scheduler.acquire("a")
    waiting = asyncio.create_task(scheduler.acquire("a"))
    await settle()
    await scheduler.close()
    with pytest.raises(LoadFailedError):
        await waiting
    assert runner.running["a"].stopped
    scheduler.release(held)


# ---- live catalog changes ------------------------------------------------------------------


async def test_scheduler_catalog_update_adds_models_at_once() -> None:
    scheduler, _, _, _ = make(spec("a"))
    change = scheduler.update_catalog(Catalog([spec("a"), spec("b", aliases=("bee",))]))
    assert (change.added, change.removed, change.changed) == (["b"], [], [])
    async with leased(scheduler, "bee") as lease:
        assert lease.model == "b"


async def test_scheduler_catalog_update_removes_idle_model_and_forgets_it() -> None:
    scheduler, runner, _, _ = make(spec("a"), spec("b"))
    await scheduler.load("b")
    change = scheduler.update_catalog(Catalog([spec("a")]))
    assert change.removed == ["b"]
    await settle()
    assert runner.running["b"].stopped
    assert [s.name for s in scheduler.status()] == ["a"]
    with pytest.raises(ModelNotFoundError):
        await scheduler.acquire("b")
    assert scheduler.reserved() == {}


async def test_scheduler_catalog_update_lets_removed_model_finish_its_requests() -> None:
    scheduler, runner, _, _ = make(spec("a", parallel=1))
    held = await scheduler.acquire("a")
    queued = asyncio.create_task(scheduler.acquire("a"))
    await settle()
    scheduler.update_catalog(Catalog([]))
    with pytest.raises(ModelNotFoundError):
        await scheduler.acquire("a")  # no new requests
    [status] = scheduler.status()
    assert (status.removed, status.state) == (True, ModelState.READY)
    assert scheduler.listing() == [Listed("a", spec("a", parallel=1), ModelState.READY, True)]
    scheduler.release(held)
    second = await queued  # the one already waiting is still served
    assert not runner.running["a"].stopped
    scheduler.release(second)
    await settle()
    assert runner.running["a"].stopped
    assert scheduler.status() == []


async def test_scheduler_catalog_update_applies_changed_settings_at_next_load() -> None:
    scheduler, runner, _, _ = make(spec("a", ctx=1024), spec("b", ctx=1024))
    await scheduler.load("a")
    change = scheduler.update_catalog(Catalog([spec("a", ctx=2048), spec("b", ctx=4096)]))
    assert change.changed == ["a", "b"]
    await settle()
    assert not runner.running["a"].stopped  # a loaded model is not restarted
    assert runner.running["a"].spec.ctx == 1024
    assert scheduler.spec("a").ctx == 2048
    # Lists show the settings that will apply (as ``status()`` does).
    assert [(x.name, x.spec.ctx, x.state) for x in scheduler.listing()] == [
        ("a", 2048, ModelState.READY),
        ("b", 4096, ModelState.STOPPED),
    ]
    await scheduler.load("b")  # a stopped model takes the new settings at once
    assert runner.running["b"].spec.ctx == 4096
    await scheduler.unload("a")
    await scheduler.load("a")
    assert runner.running["a"].spec.ctx == 2048
    assert runner.starts == ["a", "b", "a"]


async def test_scheduler_catalog_update_readding_a_draining_model_keeps_it() -> None:
    scheduler, runner, _, _ = make(spec("a"))
    held = await scheduler.acquire("a")
    scheduler.update_catalog(Catalog([]))
    scheduler.update_catalog(Catalog([spec("a")]))
    scheduler.release(held)
    await settle()
    assert not runner.running["a"].stopped
    async with leased(scheduler, "a"):
        pass
    assert runner.starts == ["a"]


async def test_scheduler_catalog_update_during_load_unloads_after_serving_waiters() -> None:
    scheduler, runner, _, _ = make(spec("a"))
    runner.gate = asyncio.Event()
    waiting = asyncio.create_task(scheduler.acquire("a"))
    await settle()
    scheduler.update_catalog(Catalog([]))
    runner.gate.set()
    lease = await waiting
    scheduler.release(lease)
    await settle()
    assert runner.running["a"].stopped
    assert scheduler.status() == []


async def test_scheduler_max_loaded_evicts_by_count_with_the_same_policy() -> None:
    scheduler, _, _, events = make(
        spec("a", keep_alive=60.0), spec("b", keep_alive=10.0), spec("c"), max_loaded={"all": 2}
    )
    for name in ("a", "b"):
        async with leased(scheduler, name):
            pass
    async with leased(scheduler, "c"):  # plenty of memory, but two models are loaded
        assert scheduler.state("b") is ModelState.STOPPED  # the nearest expiry goes
        assert scheduler.state("a") is ModelState.READY
    (evicted,) = [e for e in events if isinstance(e, Evicted)]
    assert (evicted.model, evicted.reason, evicted.for_model) == ("b", "max_loaded", "c")


async def test_scheduler_max_loaded_per_kind_and_waiting_for_a_busy_one() -> None:
    scheduler, runner, _, _ = make(
        spec("chat1"),
        spec("chat2"),
        spec("emb", kind="embedding"),
        max_loaded={"chat": 1},
    )
    first = await scheduler.acquire("chat1")
    async with leased(scheduler, "emb"):  # another kind: not capped
        assert scheduler.state("chat1") is ModelState.READY
    waiting = asyncio.create_task(scheduler.acquire("chat2"))
    await settle()
    assert not waiting.done()  # chat1 is busy: chat2 waits for it
    assert scheduler.state("chat2") is ModelState.STOPPED
    scheduler.release(first)
    second = await asyncio.wait_for(waiting, 5)
    assert scheduler.state("chat1") is ModelState.STOPPED
    assert runner.starts == ["chat1", "emb", "chat2"]
    scheduler.release(second)


class _SlowReader(FakeRunner):
    """Reads a model's header the way llama.cpp's runner does: slowly, from a file."""

    reads_files = True

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def estimate(self, spec: ModelSpec) -> dict[str, int]:
        self.reads += 1
        time.sleep(0.3)
        return super().estimate(spec)


async def test_scheduler_reads_model_headers_off_the_loop() -> None:
    runner = _SlowReader()
    scheduler = Scheduler(
        Catalog([spec("a")]), {"llamacpp": runner}, {"ram": 1000}, clock=ManualClock()
    )
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    (status,) = scheduler.status()  # a query reads no header: the estimate is not known yet
    assert status.estimate == {}
    assert runner.reads == 0
    first, second = await asyncio.gather(scheduler.acquire("a"), scheduler.acquire("a"))
    done.set()
    await ticker
    assert runner.reads == 1  # both requests waited for one reading
    assert max(gaps) < 0.2  # the loop kept running while it read
    assert scheduler.status()[0].estimate == {"ram": 100}
    scheduler.release(first)
    scheduler.release(second)
