"""A cluster's nodes in the scheduler: a node joins with its budget and its runners, models
go where they fit, a node's loss stops placements there and its models load elsewhere.
(The real thing, on Ray with real runners: ``tests/integration/test_cluster.py``.)"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from modelyard.catalog.catalog import Catalog
from modelyard.catalog.spec import Footprint, ModelSpec
from modelyard.errors import DoesNotFitError
from modelyard.scheduler import ModelState, Scheduler
from modelyard.scheduler.event import (
    Event,
    Evicted,
    MemoryPressure,
    NodeJoined,
    NodeLost,
    Restarting,
)
from tests.fake import FakeRunner, ManualClock, settle

BASE = ModelSpec(name="", path=Path("/models/x.gguf"), parallel=4, max_queue=16)


def spec(name: str, **kw: object) -> ModelSpec:
    return replace(BASE, name=name, **kw)  # type: ignore[arg-type]


def make(
    *specs: ModelSpec, local: int = 100, sizes: dict[str, int] | None = None
) -> tuple[Scheduler, FakeRunner, list[Event]]:
    runner = FakeRunner(sizes)
    scheduler = Scheduler(Catalog(specs), {"llamacpp": runner}, {"ram": local}, clock=ManualClock())
    events: list[Event] = []
    scheduler.subscribe(events.append)
    return scheduler, runner, events


def node_of(scheduler: Scheduler, model: str) -> set[str]:
    (status,) = [s for s in scheduler.status() if s.name == model]
    return set(status.held_on)


async def test_a_model_too_big_for_this_machine_goes_to_a_node_that_joined() -> None:
    scheduler, local, events = make(spec("a"), sizes={"a": 500})
    with pytest.raises(DoesNotFitError):
        await scheduler.acquire("a")
    remote = FakeRunner({"a": 500})
    scheduler.join("n1", {"ram": 1000}, {"llamacpp": remote})
    lease = await scheduler.acquire("a")
    assert remote.starts == ["a"]
    assert local.starts == []
    assert node_of(scheduler, "a") == {"n1"}
    assert scheduler.budgets() == {"local": {"ram": 100}, "n1": {"ram": 1000}}
    assert scheduler.reserved_on() == {"n1": {"ram": 500}}
    assert [(e.node, e.budget) for e in events if isinstance(e, NodeJoined)] == [
        ("n1", {"ram": 1000})
    ]
    scheduler.release(lease)


async def test_models_fill_the_node_with_most_room_and_evict_only_where_short() -> None:
    sizes = {"big": 700, "small": 400, "third": 400}
    scheduler, _, _ = make(spec("big"), spec("small"), spec("third"), local=0, sizes=sizes)
    n1, n2 = FakeRunner(sizes), FakeRunner(sizes)
    scheduler.join("n1", {"ram": 500}, {"llamacpp": n1})
    scheduler.join("n2", {"ram": 1000}, {"llamacpp": n2})
    for name in ("big", "small"):
        scheduler.release(await scheduler.acquire(name))
    assert node_of(scheduler, "big") == {"n2"}
    assert node_of(scheduler, "small") == {"n1"}  # n2 has 300 left
    scheduler.release(await scheduler.acquire("third"))
    # Either node could make room; evicting ``small`` frees less than evicting ``big``.
    assert node_of(scheduler, "third") == {"n1"}
    assert scheduler.state("small") is ModelState.STOPPED
    assert scheduler.state("big") is ModelState.READY


async def test_a_lost_node_takes_nothing_more_and_its_models_load_elsewhere() -> None:
    scheduler, _, events = make(spec("a"), local=0, sizes={"a": 400})
    n1, n2 = FakeRunner({"a": 400}), FakeRunner({"a": 400})
    scheduler.join("n1", {"ram": 1000}, {"llamacpp": n1})
    scheduler.release(await scheduler.acquire("a"))
    assert node_of(scheduler, "a") == {"n1"}
    scheduler.leave("n1", "Ray marks it dead")
    n1.running["a"].crash()  # its runner is told gone, as the cluster's beat does
    await settle()
    (lost,) = [e for e in events if isinstance(e, NodeLost)]
    assert (lost.node, lost.reason, lost.models) == ("n1", "Ray marks it dead", ("a",))
    assert "n1" not in scheduler.budgets()
    with pytest.raises(DoesNotFitError, match="budget 0 B"):
        await scheduler.acquire("a")  # no node can take it now
    scheduler.join("n2", {"ram": 1000}, {"llamacpp": n2})
    lease = await scheduler.acquire("a")
    assert node_of(scheduler, "a") == {"n2"}
    assert n2.starts == ["a"]
    scheduler.release(lease)


async def test_requests_waiting_for_a_lost_nodes_model_load_it_on_another() -> None:
    scheduler, _, _ = make(spec("a", parallel=1), local=0, sizes={"a": 400})
    n1, n2 = FakeRunner({"a": 400}), FakeRunner({"a": 400})
    scheduler.join("n1", {"ram": 1000}, {"llamacpp": n1})
    scheduler.join("n2", {"ram": 1000}, {"llamacpp": n2})
    held = await scheduler.acquire("a")
    (first,) = node_of(scheduler, "a")
    waiting = asyncio.create_task(scheduler.acquire("a"))  # queued: one slot, taken
    await settle()
    assert not waiting.done()
    runners = {"n1": n1, "n2": n2}
    other = ({"n1", "n2"} - {first}).pop()
    scheduler.leave(first, "its keeper missed 3 beats")
    runners[first].running["a"].crash()
    lease = await asyncio.wait_for(waiting, 1)
    assert node_of(scheduler, "a") == {other}
    assert runners[other].starts == ["a"]
    scheduler.release(held)  # a lease of the runner that is gone: counts for nothing
    scheduler.release(lease)


async def test_leaving_twice_or_an_unknown_node_changes_nothing() -> None:
    scheduler, _, events = make(spec("a"))
    scheduler.leave("nowhere", "it left")
    assert not [e for e in events if isinstance(e, NodeLost)]
    assert scheduler.budgets() == {"local": {"ram": 100}}


async def test_a_model_pinned_to_nodes_goes_only_there() -> None:
    sizes = {"a": 400}
    scheduler, local, _ = make(spec("a", nodes=("n1",)), local=1000, sizes=sizes)
    with pytest.raises(asyncio.TimeoutError):  # n1 has not joined: it waits for it
        await asyncio.wait_for(scheduler.acquire("a"), 0.1)
    n1, n2 = FakeRunner(sizes), FakeRunner(sizes)
    scheduler.join("n2", {"ram": 4000}, {"llamacpp": n2})
    scheduler.join("n1", {"ram": 500}, {"llamacpp": n1})
    lease = await scheduler.acquire("a")
    assert node_of(scheduler, "a") == {"n1"}  # not n2 nor this machine, with more room
    assert (local.starts, n2.starts) == ([], [])
    scheduler.release(lease)


async def test_a_model_too_big_for_its_pinned_nodes_is_refused() -> None:
    scheduler, _, _ = make(spec("a", nodes=("n1",)), local=1000, sizes={"a": 800})
    scheduler.join("n1", {"ram": 500}, {"llamacpp": FakeRunner()})
    with pytest.raises(DoesNotFitError, match="on n1"):
        await scheduler.acquire("a")


class GpuRunner(FakeRunner):
    """Each runner takes 8 bytes on each of its GPUs, besides its RAM."""

    def _footprint(self, spec: ModelSpec) -> Footprint:
        return {"ram": 100, **{f"gpu{i}": 8 for i in spec.gpus}}


async def test_each_runner_of_gpus_per_replica_takes_gpus_of_its_own_node() -> None:
    model = spec("a", replicas=2, max_replicas=2, gpus=(0, 1), gpus_per_replica=1)
    scheduler = Scheduler(Catalog([model]), {"llamacpp": GpuRunner()}, {"ram": 0})
    one, two = GpuRunner(), GpuRunner()
    # Two machines of one GPU each: runner 1 takes GPU 0 of its own node, as runner 0 does.
    scheduler.join("n1", {"ram": 1000, "gpu0": 10}, {"llamacpp": one})
    scheduler.join("n2", {"ram": 1000, "gpu0": 10}, {"llamacpp": two})
    await scheduler.load("a")
    await settle()
    placed = sorted(
        (node, running.spec.gpus)
        for node, runner in (("n1", one), ("n2", two))
        for running in runner.running.values()
    )
    assert placed == [("n1", (0,)), ("n2", (0,))]
    assert scheduler.reserved_on() == {
        "n1": {"ram": 100, "gpu0": 8},
        "n2": {"ram": 100, "gpu0": 8},
    }


async def test_gpus_per_replica_on_one_machine_gives_runner_n_the_nth_share() -> None:
    model = spec("a", replicas=2, max_replicas=2, gpus=(0, 1), gpus_per_replica=1)
    runner = GpuRunner()
    scheduler = Scheduler(
        Catalog([model]), {"llamacpp": runner}, {"ram": 1000, "gpu0": 10, "gpu1": 10}
    )
    await scheduler.load("a")
    await settle()
    assert {n: r.spec.gpus for n, r in runner.running.items()} == {"a": (0,), "a@1": (1,)}


async def test_a_node_over_its_budget_evicts_there_and_only_there() -> None:
    sizes = {"a": 400, "b": 400}
    scheduler, local, events = make(spec("a"), spec("b"), local=1000, sizes=sizes)
    n1 = FakeRunner(sizes)
    scheduler.join("n1", {"ram": 1000}, {"llamacpp": n1})
    scheduler.release(await scheduler.acquire("a"))
    scheduler.release(await scheduler.acquire("b"))
    (on_n1,) = [name for name in ("a", "b") if node_of(scheduler, name) == {"n1"}]
    (here,) = {"a", "b"} - {on_n1}
    n1.running[on_n1]._footprint = {"ram": 1200}  # grew past its node's budget
    await scheduler.measure()
    await settle()
    (pressure,) = [e for e in events if isinstance(e, MemoryPressure)]
    assert (pressure.node, pressure.evicting, pressure.budget) == ("n1", (on_n1,), {"ram": 1000})
    assert scheduler.state(on_n1) is ModelState.STOPPED
    assert scheduler.state(here) is ModelState.READY
    assert local.running[here].stopped is False


async def test_a_runner_gone_with_its_node_is_no_crash_of_its_model() -> None:
    scheduler, _, events = make(spec("a"), local=0, sizes={"a": 400})
    n1 = FakeRunner({"a": 400})
    scheduler.join("n1", {"ram": 1000}, {"llamacpp": n1})
    for _ in range(3):  # lost again and again: never backed off (the clock stands still)
        scheduler.release(await scheduler.acquire("a"))
        running = n1.running["a"]
        running.node_lost = True  # type: ignore[attr-defined]
        running.stopped = True
        running.crash()
        await settle()
    evicted = [e for e in events if isinstance(e, Evicted)]
    assert {e.reason for e in evicted} == {"node_lost"}
    assert not [e for e in events if isinstance(e, Restarting)]
    assert scheduler.state("a") is ModelState.STOPPED
