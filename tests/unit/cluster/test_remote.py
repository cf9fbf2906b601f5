"""The gateway's side of a node's runners, against a keeper reached as Ray reaches it (each
call's ``.remote()`` gives something to await), without Ray: a start and its warm swaps, a
failed start, an exit told by a beat, a stop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from modelyard.catalog.spec import ModelSpec
from modelyard.cluster.keeper import Keeper
from modelyard.cluster.remote import NODE_LOST, NodeRunner, RemoteServer
from modelyard.errors import LoadFailedError
from modelyard.runners.base import KvNews, warm_of
from tests.fake import FakeRunner, FakeRunning
from tests.unit.cluster.handle import Handle

SPEC = ModelSpec(name="a", path=Path("/models/a.gguf"))


class _Warm:
    """A runner's warm swaps, as llama.cpp's saved slots tell them."""

    def __init__(self) -> None:
        self.tell: Callable[[KvNews], None] = lambda news: None
        self.saves = 0

    async def restore(self) -> None:
        self.tell(KvNews("restored", states=1, tokens=300, bytes=4096, seconds=0.01))

    async def save(self) -> None:
        self.saves += 1
        self.tell(KvNews("saved", states=2, tokens=700, bytes=9000, seconds=0.02))


class WarmRunner(FakeRunner):
    async def start(self, spec: ModelSpec) -> FakeRunning:
        running = await super().start(spec)
        running.warm = _Warm()  # type: ignore[attr-defined]
        return running


def node(runner: FakeRunner) -> tuple[NodeRunner, dict[int, RemoteServer], Keeper]:
    keeper = Keeper(name="n1", ip="127.0.0.1", home="/nonexistent", runners={"llamacpp": runner})
    servers: dict[int, RemoteServer] = {}
    return NodeRunner(runner, Handle(keeper), "n1", servers), servers, keeper


async def test_a_remote_runner_is_reached_directly_and_keeps_its_conversations() -> None:
    runner = WarmRunner({"a": 300})
    remote, servers, _ = node(runner)
    assert remote.estimate(SPEC) == {"ram": 300}  # read here, as the node would
    running = await remote.start(SPEC)
    assert isinstance(running, RemoteServer)
    assert servers == {running.id: running}
    assert running.base_url == "http://fake/a"
    assert running.headers == {"Authorization": "Bearer key-of-a"}
    assert running.footprint() == {"ram": 300}
    told: list[KvNews] = []
    warm = warm_of(running)
    assert warm is not None
    warm.tell = told.append
    await warm.restore()  # the keeper restored as it started it: told now, once
    await warm.restore()
    await warm.save()
    assert [(n.kind, n.states, n.tokens) for n in told] == [("restored", 1, 300), ("saved", 2, 700)]
    assert runner.running["a"].warm.saves == 1  # type: ignore[attr-defined]
    await running.stop(1.0)
    assert await running.wait() == -15
    assert runner.running["a"].stopped
    assert servers == {}  # a stopped runner is not kept


async def test_a_runner_without_warm_swaps_has_none_remotely() -> None:
    remote, _, _ = node(FakeRunner())
    running = await remote.start(SPEC)
    assert warm_of(running) is None


async def test_a_failed_start_on_a_node_says_which_node() -> None:
    runner = FakeRunner()
    runner.fail["a"] = "out of file handles"
    remote, servers, _ = node(runner)
    with pytest.raises(LoadFailedError, match="on node n1: out of file handles"):
        await remote.start(SPEC)
    assert servers == {}


async def test_an_exit_or_a_lost_node_ends_the_wait() -> None:
    remote, servers, _ = node(FakeRunner())
    running = await remote.start(SPEC)
    assert isinstance(running, RemoteServer)
    waiting = asyncio.ensure_future(running.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    running.exited(NODE_LOST, "node n1 lost: Ray marks it dead")
    assert await waiting == NODE_LOST
    assert servers == {}
    assert running.log_tail() == "node n1 lost: Ray marks it dead"
    await running.stop(1.0)  # gone already: nothing to ask
