"""The gateway's view of a cluster, without Ray: Ray's node table and its keepers are
played by the test (``_alive_nodes``, ``_keeper_of``), the keepers are real ones over fake
runners, and the scheduler is real. A round at a time: a node joins, its runner's exit is
told by a beat, a node is lost (Ray says so, or its keeper misses beats, or it leaves), a
lost node joins again. (On real Ray: ``tests/integration/test_cluster*.py``.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from modelyard.catalog.catalog import Catalog
from modelyard.catalog.spec import ModelSpec
from modelyard.cluster import members
from modelyard.cluster.keeper import Keeper
from modelyard.cluster.members import Cluster
from modelyard.cluster.remote import NODE_LOST
from modelyard.scheduler import ModelState, Scheduler
from modelyard.scheduler.event import Event, NodeJoined, NodeLost
from tests.fake import FakeRunner, settle
from tests.unit.cluster.handle import Handle

SPEC = ModelSpec(name="a", path=Path("/models/a.gguf"))


class Ray:
    """What the cluster reads of Ray (alive nodes, and a keeper on some of them), and what
    its probe of runners' ports finds."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.alive: dict[str, str] = {}
        self.keepers: dict[str, Handle] = {}
        self.cut: set[str] = set()
        """Hosts the gateway's probe cannot reach."""
        monkeypatch.setattr(members, "_alive_nodes", lambda: dict(self.alive))
        monkeypatch.setattr(members, "_keeper_of", self._keeper_of)
        monkeypatch.setattr(members, "_reachable", self._reachable)

    async def _reachable(self, host: str, port: int) -> bool:
        return host not in self.cut

    def _keeper_of(self, ray_id: str) -> Handle:
        if ray_id not in self.keepers:
            raise ValueError("no such actor")
        return self.keepers[ray_id]

    def join(
        self, ray_id: str, name: str, runner: FakeRunner, ram: str = "1GiB", home: str = "/none"
    ) -> Handle:
        keeper = Keeper(name=name, ip="127.0.0.1", home=home, ram=ram, runners={"llamacpp": runner})
        self.alive[ray_id] = name
        self.keepers[ray_id] = Handle(keeper)
        return self.keepers[ray_id]


def make(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Cluster, Scheduler, Ray, list[str], list[Event]]:
    local = FakeRunner({"a": 300})
    scheduler = Scheduler(Catalog([SPEC]), {"llamacpp": local}, {"ram": 0})
    events: list[Event] = []
    scheduler.subscribe(events.append)
    severed: list[str] = []
    cluster = Cluster(scheduler, {"llamacpp": local}, "head:6380", sever=severed.append)
    return cluster, scheduler, Ray(monkeypatch), severed, events


async def test_a_node_with_a_keeper_joins_and_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster, scheduler, ray, _, events = make(monkeypatch)
    ray.alive["head-id"] = "head"  # the head runs no keeper: not a node of ours
    runner = FakeRunner({"a": 300})
    ray.join("id-1", "n1", runner)
    await cluster._round()
    assert list(cluster.nodes) == ["n1"]
    assert scheduler.budgets()["n1"] == {"ram": 1 << 30}
    assert [e.node for e in events if isinstance(e, NodeJoined)] == ["n1"]
    lease = await scheduler.acquire("a")
    assert runner.starts == ["a"]
    assert lease.base_url == "http://fake/a"
    scheduler.release(lease)
    await cluster._round()  # a beat: the runner's memory as its keeper measures it
    (status,) = scheduler.status()
    assert status.held_on == {"n1": {"ram": 300}}


async def test_a_runner_that_exits_on_its_node_is_told_by_the_next_beat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster, scheduler, ray, _, _ = make(monkeypatch)
    runner = FakeRunner({"a": 300})
    ray.join("id-1", "n1", runner)
    await cluster._round()
    scheduler.release(await scheduler.acquire("a"))
    runner.running["a"].crash(-11)
    await settle()
    assert scheduler.state("a") is ModelState.READY  # not known yet
    await cluster._round()
    await settle()
    assert scheduler.state("a") is ModelState.STOPPED
    assert cluster.nodes["n1"].servers == {}


@pytest.mark.parametrize("how", ["dead", "silent", "unreachable", "leaves"])
async def test_a_lost_node_ends_its_runners_and_takes_nothing_more(
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    cluster, scheduler, ray, severed, events = make(monkeypatch)
    handle = ray.join("id-1", "n1", FakeRunner({"a": 300}))
    await cluster._round()
    scheduler.release(await scheduler.acquire("a"))
    (server,) = cluster.nodes["n1"].servers.values()
    if how == "dead":
        del ray.alive["id-1"]
        await cluster._round()
        reason = "Ray marks it dead"
    elif how == "silent":
        handle.broken = True
        for _ in range(3):
            await cluster._round()
        reason = "its keeper missed 3 beats"
    elif how == "unreachable":  # Ray and the keeper have not noticed yet
        ray.cut.add("fake")
        for _ in range(3):
            await cluster._round()
        reason = "its runners could not be reached 3 times"
    else:
        await handle.keeper.leave(grace=1.0)
        await cluster._round()
        await cluster._round()  # still a Ray node, for a while: never found again
        reason = "it left"
    await settle()
    assert cluster.nodes == {}
    assert cluster.lost["n1"][1] == reason
    assert await server.wait() == (-15 if how == "leaves" else NODE_LOST)
    told = "fake log of a" if how == "leaves" else f"node n1 lost: {reason}"
    assert server.log_tail() == told
    assert severed == ([] if how == "leaves" else [server.base_url])
    assert "n1" not in scheduler.budgets()
    assert scheduler.state("a") is ModelState.STOPPED
    (lost,) = [e for e in events if isinstance(e, NodeLost)]
    assert (lost.node, lost.reason) == ("n1", reason)


async def test_a_node_whose_runner_port_refuses_is_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refused connection is an answer: the node is there (its runner may have exited,
    which the beat tells)."""
    from modelyard.cluster.members import _reachable

    assert await _reachable("127.0.0.1", 9)  # nothing listens on the discard port


async def test_a_lost_node_that_joins_again_serves_again(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster, scheduler, ray, _, _ = make(monkeypatch)
    ray.join("id-1", "n1", FakeRunner({"a": 300}))
    await cluster._round()
    del ray.alive["id-1"]
    await cluster._round()
    assert "n1" in cluster.lost
    runner = FakeRunner({"a": 300})
    ray.join("id-2", "n1", runner)  # the same machine: a new Ray node
    await cluster._round()
    assert "n1" not in cluster.lost
    assert cluster.nodes["n1"].ray_id == "id-2"
    scheduler.release(await scheduler.acquire("a"))
    assert runner.starts == ["a"]


async def test_a_remote_runners_log_is_read_and_followed_on_its_node(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cluster, scheduler, ray, _, _ = make(monkeypatch)
    ray.join("id-1", "n1", FakeRunner({"a": 300}), home=str(tmp_path))
    await cluster._round()
    scheduler.release(await scheduler.acquire("a"))
    node = cluster.node_of(scheduler.running("a"))
    assert node is cluster.nodes["n1"]
    assert cluster.node_of(object()) is None  # a runner of this machine
    log = tmp_path / "logs" / "a.log"
    log.parent.mkdir()
    log.write_text("one\ntwo\nthree\n")
    lines, end = await cluster.log(node, "a", 2)
    assert (lines, end) == (["two", "three"], log.stat().st_size)
    stop = asyncio.Event()
    followed = cluster.follow_log(node, "a", end, stop)
    with log.open("a") as f:
        f.write("four\nfive, half")  # a line is told once whole
    assert await anext(followed) == "four"
    with log.open("a") as f:
        f.write(" and whole\n")
    assert await anext(followed) == "five, half and whole"
    log.write_text("rotated\n")  # shorter than where it was: a new file
    assert await anext(followed) == "rotated"
    stop.set()
    with pytest.raises(StopAsyncIteration):
        await anext(followed)
