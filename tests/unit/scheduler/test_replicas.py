"""Several runners of one model (``replicas``, ``max_replicas``), driven by the fake runner
and the manual clock: balance, a replica's crash, scaling up and down, the budget."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from modelyard.catalog.catalog import Catalog
from modelyard.catalog.spec import ModelSpec
from modelyard.scheduler import Lease, ModelState, Scheduler
from modelyard.scheduler.event import Event, Evicted, StateChanged
from tests.fake import FakeRunner, ManualClock, settle

BASE = ModelSpec(name="", path=Path("/models/x.gguf"), parallel=4, max_queue=16)


def spec(name: str, **kw: object) -> ModelSpec:
    return replace(BASE, name=name, **kw)  # type: ignore[arg-type]


def make(
    *specs: ModelSpec, budget: int = 1000, max_loaded: dict[str, int] | None = None
) -> tuple[Scheduler, FakeRunner, ManualClock, list[Event]]:
    runner = FakeRunner()
    clock = ManualClock()
    scheduler = Scheduler(
        Catalog(specs), {"llamacpp": runner}, {"ram": budget}, clock=clock, max_loaded=max_loaded
    )
    events: list[Event] = []
    scheduler.subscribe(events.append)
    return scheduler, runner, clock, events


def per_replica(leases: list[Lease]) -> Counter[int]:
    return Counter(lease.replica for lease in leases)


async def test_replicas_start_together_and_share_requests_evenly() -> None:
    scheduler, runner, _, events = make(spec("a", replicas=2, max_replicas=2))
    leases = await asyncio.gather(*(scheduler.acquire("a") for _ in range(8)))
    assert sorted(runner.starts) == ["a", "a@1"]
    assert per_replica(leases) == {0: 4, 1: 4}
    assert {lease.base_url for lease in leases} == {"http://fake/a", "http://fake/a@1"}
    ready = [e.replica for e in events if isinstance(e, StateChanged) and e.new == "ready"]
    assert sorted(ready) == [0, 1]
    (status,) = scheduler.status()
    assert status.state is ModelState.READY
    assert status.in_flight == 8
    assert [(r.index, r.in_flight) for r in status.replicas] == [(0, 4), (1, 4)]
    for lease in leases:
        scheduler.release(lease)


async def test_replicas_next_request_goes_to_the_least_busy() -> None:
    scheduler, _, _, _ = make(spec("a", replicas=2, max_replicas=2))
    await scheduler.load("a")
    await settle()  # both ready (until then the first ready one takes every request)
    leases = await asyncio.gather(*(scheduler.acquire("a") for _ in range(4)))
    assert per_replica(leases) == {0: 2, 1: 2}
    on_one = [lease for lease in leases if lease.replica == 1]
    for lease in on_one:
        scheduler.release(lease)
    more = await asyncio.gather(*(scheduler.acquire("a") for _ in range(3)))
    assert per_replica(more) == {1: 2, 0: 1}


async def test_replica_crash_fails_only_its_own_requests_and_restarts() -> None:
    scheduler, runner, _, events = make(spec("a", replicas=2, max_replicas=2))
    leases = await asyncio.gather(*(scheduler.acquire("a") for _ in range(8)))
    runner.running["a@1"].crash()
    await settle()
    assert scheduler.state("a") is ModelState.READY  # replica 0 serves on
    exits = [e for e in events if isinstance(e, Evicted) and e.reason == "crash"]
    assert [e.replica for e in exits] == [1]
    (status,) = scheduler.status()
    assert status.in_flight == 4  # the crashed runner's leases no longer count
    # Its requests' leases are void; replica 0's still count when returned.
    for lease in leases:
        scheduler.release(lease)
    assert scheduler.status()[0].in_flight == 0
    # Requests beyond replica 0's slots start replica 1 again.
    again = await asyncio.gather(*(scheduler.acquire("a") for _ in range(6)))
    assert runner.starts.count("a@1") == 2
    assert per_replica(again) == {0: 4, 1: 2}


async def test_scale_up_after_requests_wait_scale_up_wait_then_down_after_keep_alive() -> None:
    a = spec("a", parallel=1, max_replicas=2, scale_up_wait=2.0, keep_alive=60.0)
    scheduler, runner, clock, _ = make(a)
    first = await scheduler.acquire("a")
    waiting = asyncio.create_task(scheduler.acquire("a"))
    await settle()
    assert runner.starts == ["a"]
    clock.advance(1.9)
    await settle()
    assert runner.starts == ["a"]
    assert not waiting.done()
    clock.advance(0.2)
    await settle()
    assert runner.starts == ["a", "a@1"]
    second = await waiting
    assert second.replica == 1
    scheduler.release(second)
    clock.advance(30)
    scheduler.release(first)
    clock.advance(31)  # replica 1 has been idle 61 s, replica 0 for 31 s
    await settle()
    assert [r.index for r in scheduler.status()[0].replicas] == [0]
    assert runner.running["a@1"].stopped
    assert not runner.running["a"].stopped


async def test_scale_up_never_evicts_another_model() -> None:
    a = spec("a", parallel=1, max_replicas=2, scale_up_wait=1.0)
    scheduler, runner, clock, _ = make(a, spec("b"), budget=250)
    scheduler.release(await scheduler.acquire("b"))  # b idle, holding 100 of 250
    first = await scheduler.acquire("a")
    waiting = asyncio.create_task(scheduler.acquire("a"))
    clock.advance(5)
    await settle()
    assert runner.starts == ["b", "a"]
    assert scheduler.state("b") is ModelState.READY
    scheduler.release(first)
    scheduler.release(await waiting)


async def test_fixed_replicas_evict_an_idle_model_like_a_load() -> None:
    scheduler, _, _, events = make(spec("a", replicas=2, max_replicas=2), spec("b"), budget=250)
    scheduler.release(await scheduler.acquire("b"))
    leases = await asyncio.gather(*(scheduler.acquire("a") for _ in range(8)))
    await settle()
    assert scheduler.state("b") is ModelState.STOPPED
    assert [e.model for e in events if isinstance(e, Evicted)] == ["b"]
    assert per_replica(leases) == {0: 4, 1: 4}
    assert scheduler.reserved() == {"ram": 200}


async def test_replicas_count_once_against_max_loaded_models() -> None:
    scheduler, runner, _, _ = make(spec("a", replicas=2, max_replicas=2), max_loaded={"all": 1})
    lease = await scheduler.acquire("a")
    await settle()
    assert sorted(runner.starts) == ["a", "a@1"]
    assert {r.state for r in scheduler.status()[0].replicas} == {ModelState.READY}
    scheduler.release(lease)


async def test_unload_stops_every_replica() -> None:
    scheduler, runner, _, _ = make(spec("a", replicas=3, max_replicas=3))
    scheduler.release(await scheduler.acquire("a"))
    await settle()
    await scheduler.unload("a")
    assert scheduler.state("a") is ModelState.STOPPED
    assert all(running.stopped for running in runner.running.values())
    assert len(runner.running) == 3


async def test_one_request_at_a_time_takes_turns_between_replicas() -> None:
    # Both stay warm under a light load (the one unused longest goes next), so that neither
    # runs out its keep-alive while the model is in use.
    scheduler, _, clock, _ = make(spec("a", replicas=2, max_replicas=2, keep_alive=10.0))
    await scheduler.load("a")
    await settle()
    served = []
    for _ in range(6):
        clock.advance(4)
        lease = await scheduler.acquire("a")
        served.append(lease.replica)
        scheduler.release(lease)
    assert sorted(served) == [0, 0, 0, 1, 1, 1]
    assert len({r.index for r in scheduler.status()[0].replicas}) == 2


class PerGpuRunner(FakeRunner):
    """100 bytes of RAM, and 80 on each GPU the runner is given."""

    def _footprint(self, spec: ModelSpec) -> dict[str, int]:
        return {"ram": 100, **{f"gpu{i}": 80 for i in spec.gpus}}


@pytest.mark.parametrize(("share", "runners"), [(1, 2), (None, 1)])
async def test_gpus_per_replica_gives_each_runner_its_own_gpu(
    share: int | None, runners: int
) -> None:
    # Two GPUs of 100: with a GPU each both runners fit; sharing both GPUs, only one does.
    runner = PerGpuRunner()
    a = spec("a", replicas=2, max_replicas=2, gpus=(0, 1), gpus_per_replica=share)
    budget = {"ram": 1000, "gpu0": 100, "gpu1": 100}
    scheduler = Scheduler(Catalog([a]), {"llamacpp": runner}, budget, clock=ManualClock())
    lease = await scheduler.acquire("a")
    await settle()
    started = {name: running.spec.gpus for name, running in runner.running.items()}
    if share:
        assert started == {"a": (0,), "a@1": (1,)}
        assert scheduler.reserved() == {"ram": 200, "gpu0": 80, "gpu1": 80}
    else:
        assert started == {"a": (0, 1)}  # the second runner waits for room that never comes
    assert len([r for r in scheduler.status()[0].replicas if r.state == "ready"]) == runners
    scheduler.release(lease)
