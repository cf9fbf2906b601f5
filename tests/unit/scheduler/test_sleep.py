"""vLLM's sleep mode (``sleep_level``): an idle runner gives back its GPU memory by sleeping
instead of stopping, the next request wakes it, and the budget counts it asleep by what it
holds then. The fake runner and the manual clock; the real process is in the integration
test of the command engine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from modelyard.catalog.catalog import Catalog
from modelyard.catalog.spec import Footprint, ModelSpec
from modelyard.errors import LoadFailedError
from modelyard.scheduler import ModelState, Scheduler
from modelyard.scheduler.event import Event, Evicted
from tests.fake import FakeRunner, ManualClock, settle

BASE = ModelSpec(name="", path=Path("/models/x"), parallel=2, keep_alive=None)
GPU_MODEL = {"ram": 100, "gpu0": 80}


def spec(name: str, **kw: object) -> ModelSpec:
    return replace(BASE, name=name, **kw)  # type: ignore[arg-type]


def make(
    *specs: ModelSpec, budget: Footprint, footprints: dict[str, Footprint]
) -> tuple[Scheduler, FakeRunner, ManualClock, list[Event]]:
    runner = FakeRunner(footprints=footprints)
    clock = ManualClock()
    scheduler = Scheduler(Catalog(specs), {"llamacpp": runner}, budget, clock=clock)
    events: list[Event] = []
    scheduler.subscribe(events.append)
    return scheduler, runner, clock, events


def status(scheduler: Scheduler, name: str) -> tuple[ModelState, dict[str, int]]:
    (found,) = [s for s in scheduler.status() if s.name == name]
    return found.state, dict(found.held)


async def test_sleep_frees_the_gpu_for_another_model_and_wakes_the_same_process() -> None:
    scheduler, runner, _, events = make(
        spec("a", sleep_level=1),
        spec("b"),
        budget={"ram": 1000, "gpu0": 100},
        footprints={"a": GPU_MODEL, "b": GPU_MODEL},
    )
    await scheduler.load("a")
    await scheduler.load("b")  # the GPU holds one of them: a sleeps
    await settle()
    a = runner.running["a"]
    assert (a.sleeps, a.stopped) == ([1], False)
    assert status(scheduler, "a") == (ModelState.SLEEPING, {"ram": 100})
    assert scheduler.reserved() == {"ram": 200, "gpu0": 80}
    (evicted,) = [e for e in events if isinstance(e, Evicted)]
    assert (evicted.model, evicted.reason, evicted.for_model) == ("a", "memory", "b")
    assert "asleep (level 1)" in evicted.detail
    assert evicted.freed == {"gpu0": 80}

    lease = await scheduler.acquire("a")  # b is idle: it stops, a wakes
    await settle()
    assert runner.starts == ["a", "b"]  # no new process for a
    assert (a.wakes, lease.base_url) == (1, "http://fake/a")
    assert runner.running["b"].stopped
    assert scheduler.reserved() == {"ram": 100, "gpu0": 80}
    scheduler.release(lease)


def one(**kw: object) -> tuple[Scheduler, FakeRunner, ManualClock, list[Event]]:
    """Model ``a`` alone, on a GPU, sleeping at level 1 after 1 s idle unless ``kw`` says."""
    a = spec("a", **{"sleep_level": 1, "keep_alive": 1.0, **kw})
    return make(a, budget={"ram": 1000, "gpu0": 100}, footprints={"a": GPU_MODEL})


async def test_keep_alive_puts_it_to_sleep_and_a_request_wakes_it() -> None:
    scheduler, runner, clock, _ = one(sleep_level=2, keep_alive=10.0)
    scheduler.release(await scheduler.acquire("a"))
    clock.advance(11)
    await settle()
    assert runner.running["a"].sleeps == [2]
    assert status(scheduler, "a") == (ModelState.SLEEPING, {"ram": 100})
    lease = await scheduler.acquire("a")
    assert status(scheduler, "a")[0] is ModelState.READY
    assert runner.starts == ["a"]
    scheduler.release(lease)


async def test_a_sleeping_runner_is_stopped_when_ram_is_short() -> None:
    scheduler, runner, _, events = make(
        spec("a", sleep_level=1, keep_alive=0.0),
        spec("c"),
        budget={"ram": 250, "gpu0": 100},
        footprints={"a": GPU_MODEL, "c": {"ram": 200}},
    )
    await scheduler.load("a")  # keep_alive 0: asleep at once
    await settle()
    assert status(scheduler, "a")[0] is ModelState.SLEEPING
    await scheduler.load("c")
    await settle()
    assert runner.running["a"].stopped
    assert status(scheduler, "a")[0] is ModelState.STOPPED
    last = [e for e in events if isinstance(e, Evicted)][-1]
    assert (last.model, last.for_model, last.freed) == ("a", "c", {"ram": 100})


async def test_a_runner_that_cannot_sleep_is_stopped() -> None:
    scheduler, runner, clock, _ = one()
    await scheduler.load("a")
    runner.running["a"].fail_sleep = "404 Not Found (no VLLM_SERVER_DEV_MODE)"
    clock.advance(2)
    await settle()
    assert runner.running["a"].stopped
    assert status(scheduler, "a") == (ModelState.STOPPED, {})


async def test_a_runner_that_cannot_wake_fails_the_request_and_is_stopped() -> None:
    scheduler, runner, clock, _ = one()
    await scheduler.load("a")
    clock.advance(2)
    await settle()
    runner.running["a"].fail_wake = "CUDA out of memory"
    with pytest.raises(LoadFailedError, match="CUDA out of memory"):
        await scheduler.acquire("a")
    assert runner.running["a"].stopped
    assert status(scheduler, "a") == (ModelState.FAILED, {})


async def test_a_crash_while_asleep_stops_it_and_the_next_request_starts_it() -> None:
    scheduler, runner, clock, _ = one()
    await scheduler.load("a")
    clock.advance(2)
    await settle()
    runner.running["a"].crash()
    await settle()
    assert status(scheduler, "a") == (ModelState.STOPPED, {})
    scheduler.release(await scheduler.acquire("a"))
    assert runner.starts == ["a", "a"]


async def test_without_sleep_level_an_idle_model_stops() -> None:
    scheduler, runner, clock, _ = one(sleep_level=0)
    await scheduler.load("a")
    clock.advance(2)
    await settle()
    assert runner.running["a"].sleeps == []
    assert runner.running["a"].stopped
