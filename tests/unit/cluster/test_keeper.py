"""A node's keeper, without Ray (its methods are what the actor answers): runners started
and stopped, their memory and exits told at each beat, fencing when the gateway goes
silent, and leaving. The keeper on a real Ray node: ``tests/integration/test_cluster.py``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from modelyard.catalog.spec import ModelSpec
from modelyard.cluster.keeper import Keeper
from modelyard.errors import LoadFailedError
from tests.fake import FakeRunner

SPEC = ModelSpec(name="a", path=Path("/models/a.gguf"))


def keeper(runner: FakeRunner, fence_after: float = 60.0) -> Keeper:
    return Keeper(
        name="n1",
        ip="127.0.0.1",
        home="/nonexistent",
        ram="1GiB",
        fence_after=fence_after,
        runners={"llamacpp": runner},
    )


async def test_a_started_runner_is_reached_directly_and_measured_at_each_beat() -> None:
    runner = FakeRunner({"a": 300})
    node = keeper(runner)
    info = await node.describe()
    assert (info.name, info.ip, info.budget) == ("n1", "127.0.0.1", {"ram": 1 << 30})
    started = await node.start(SPEC)
    assert started.base_url == "http://fake/a"
    assert started.headers == {"Authorization": "Bearer key-of-a"}
    assert started.footprint == {"ram": 300}
    beat = await node.beat()
    assert beat.runners[started.id].footprint == {"ram": 300}
    assert beat.runners[started.id].exit_code is None
    assert not beat.leaving
    assert await node.stop(started.id, grace=1.0) == -15
    assert runner.running["a"].stopped
    assert (await node.beat()).runners == {}


async def test_an_exit_is_told_once_with_the_runners_last_words() -> None:
    runner = FakeRunner()
    node = keeper(runner)
    started = await node.start(SPEC)
    runner.running["a"].crash(-11)
    await asyncio.sleep(0)
    beat = await node.beat()
    assert beat.runners[started.id].exit_code == -11
    assert await node.log_tail(started.id) == "fake log of a"
    assert (await node.beat()).runners == {}
    assert await node.log_tail(started.id) == ""


async def test_a_keeper_the_gateway_stops_beating_stops_its_runners() -> None:
    runner = FakeRunner()
    node = keeper(runner, fence_after=0.2)
    await node.start(SPEC)
    for _ in range(4):  # beats keep it serving
        await asyncio.sleep(0.1)
        await node.beat()
    assert not runner.running["a"].stopped
    await asyncio.sleep(0.5)  # cut off: no beat
    assert runner.running["a"].stopped


async def test_a_leaving_node_stops_its_runners_and_takes_no_more() -> None:
    runner = FakeRunner()
    node = keeper(runner)
    started = await node.start(SPEC)
    await node.leave(grace=1.0)
    assert runner.running["a"].stopped
    beat = await node.beat()
    assert beat.leaving
    assert beat.runners[started.id].exit_code == -15
    with pytest.raises(LoadFailedError, match="leaving"):
        await node.start(SPEC)


async def test_a_gateway_that_finds_the_node_anew_leaves_no_runner_it_does_not_know() -> None:
    runner = FakeRunner()
    node = keeper(runner)
    await node.describe()
    await node.start(SPEC)
    await node.describe()  # the gateway restarted, or lost the node and found it again
    assert runner.running["a"].stopped
    assert (await node.beat()).runners == {}
