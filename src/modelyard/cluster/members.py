"""The gateway's view of a cluster: which nodes there are, what they hold, which are lost.

Every ``interval`` (1 s) the gateway reads Ray's node table and beats each node's keeper
(``Keeper.beat``): a node whose keeper appears joins the scheduler with the budget it
declared; the beat's answer carries each runner's memory and exits. A node is lost at the
first of three signals: Ray marks it dead (its health checks: ~5 s after a cut), its keeper
misses ``_MISSES`` beats in a row, or the gateway's own probe (a connection to each of its
runners' ports, apart from Ray) reaches none of them ``_MISSES`` rounds in a row. Its
runners are then told gone (their requests end, the scheduler places their models elsewhere
as requests come) and the node gets nothing more until it joins again (a rejoined node is a
new Ray node).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from modelyard.catalog.spec import Footprint
from modelyard.cluster.keeper import NAMESPACE, Beat, NodeInfo, keeper_name
from modelyard.cluster.remote import NODE_LOST, NodeRunner, RemoteServer
from modelyard.runners.base import Runner
from modelyard.scheduler import Scheduler

log = logging.getLogger(__name__)

_MISSES = 3
"""Beats in a row a keeper may miss before its node is lost."""
_BEAT_TIMEOUT = 2.0
"""Seconds a beat may take: a busy node's answer is late, not lost (Ray's own health checks,
1 s three times, notice a dead node first)."""
_DESCRIBE_TIMEOUT = 10.0
_PROBE_TIMEOUT = 1.0
"""Seconds a runner's port may take to accept a connection, in the gateway's probe."""
_LOG_TIMEOUT = 10.0
_LOG_POLL = 0.5
"""Seconds between reads of a remote log that is followed."""
_RECONNECT = 5.0
"""Seconds between tries to connect to a Ray head that is not up."""


@dataclass
class Node:
    """A node that joined, as the gateway knows it."""

    name: str
    ray_id: str
    ip: str
    budget: Footprint
    keeper: Any
    joined_at: float
    last_seen: float
    servers: dict[int, RemoteServer] = field(default_factory=dict)
    misses: int = 0
    """Beats in a row its keeper did not answer."""
    unreachable: int = 0
    """Rounds in a row none of its runners' ports could be reached."""


class Cluster:
    """Joins and loses the nodes of the Ray cluster at ``address`` in ``scheduler``; see the
    module docstring. ``runners``: this machine's, whose estimates hold on every node."""

    def __init__(
        self,
        scheduler: Scheduler,
        runners: Mapping[str, Runner],
        address: str,
        *,
        ip: str | None = None,
        interval: float = 1.0,
        sever: Callable[[str], object] | None = None,
    ) -> None:
        """``sever``: aborts the requests under way to a runner (by its base URL) whose
        node is lost: a cut-off node's connections would wait for TCP to give up."""
        self._scheduler = scheduler
        self._runners = runners
        self.address = address
        self._ip = ip
        self._interval = interval
        self._sever = sever
        self.nodes: dict[str, Node] = {}
        """Joined nodes, by name."""
        self.lost: dict[str, tuple[float, str]] = {}
        """Nodes lost and not back, by name: when (wall clock) and why."""
        self.connected = asyncio.Event()
        self.error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Connects to Ray and watches its nodes, in the background (``import ray`` takes
        seconds: the server answers meanwhile)."""
        self._task = asyncio.create_task(self._run(), name="cluster")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.connected.is_set():
            import ray

            await asyncio.to_thread(ray.shutdown)

    async def _run(self) -> None:
        while True:  # the head may come up after the gateway
            try:
                await asyncio.to_thread(self._connect)
                break
            except Exception as exc:
                self._failed(f"cannot connect to Ray at {self.address}: {exc}")
            await asyncio.sleep(_RECONNECT)
        self.error = None
        self.connected.set()
        while True:
            try:
                await self._round()
                self.error = None
            except Exception as exc:
                self._failed(f"reading the cluster's nodes failed: {exc!r}")
            await asyncio.sleep(self._interval)

    def _failed(self, error: str) -> None:
        """Logs ``error`` once, however many times in a row it happens."""
        if error != self.error:
            log.error("%s", error)
        self.error = error

    def _connect(self) -> None:
        import ray

        try:
            ray.init(
                address=self.address,
                namespace=NAMESPACE,
                _node_ip_address=self._ip,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        except Exception:
            ray.shutdown()  # what was half set up, before the next try
            raise

    async def _round(self) -> None:
        alive = await asyncio.to_thread(_alive_nodes)
        for node in list(self.nodes.values()):
            if node.ray_id not in alive:
                self._lose(node, "Ray marks it dead")
        known = {node.ray_id for node in self.nodes.values()}
        await asyncio.gather(*(self._find(i) for i in alive if i not in known))
        joined = list(self.nodes.values())
        await asyncio.gather(*(self._beat(n) for n in joined), *(self._probe(n) for n in joined))

    async def _find(self, ray_id: str) -> None:
        """Joins the Ray node ``ray_id`` if a keeper runs there."""
        try:
            keeper = await asyncio.to_thread(_keeper_of, ray_id)
            info: NodeInfo = await asyncio.wait_for(keeper.describe.remote(), _DESCRIBE_TIMEOUT)
        except (ValueError, TimeoutError):
            return  # no keeper (the head, a node still starting): not a node of ours yet
        except Exception as exc:
            log.warning("the keeper of Ray node %s did not answer: %s", ray_id[:8], exc)
            return
        if info.leaving:
            return  # ``join`` is stopping there
        old = self.nodes.get(info.name)
        if old is not None:
            self._lose(old, "it joined again")
        now = time.time()
        node = Node(info.name, ray_id, info.ip, dict(info.budget), keeper, now, now)
        self.nodes[info.name] = node
        self.lost.pop(info.name, None)
        runners = {
            engine: NodeRunner(local, keeper, info.name, node.servers)
            for engine, local in self._runners.items()
        }
        log.info("node %s (%s) joined", info.name, info.ip)
        self._scheduler.join(info.name, info.budget, runners)

    async def _beat(self, node: Node) -> None:
        try:
            beat: Beat = await asyncio.wait_for(node.keeper.beat.remote(), _BEAT_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception:
            node.misses += 1
            if node.misses >= _MISSES:
                self._lose(node, f"its keeper missed {node.misses} beats")
            return
        node.misses = 0
        node.last_seen = time.time()
        for ident, told in beat.runners.items():
            server = node.servers.get(ident)
            if server is None:
                continue
            if told.exit_code is None:
                server.beat(told.footprint)
                continue
            tail = ""
            with contextlib.suppress(Exception):
                tail = await asyncio.wait_for(node.keeper.log_tail.remote(ident), _BEAT_TIMEOUT)
            server.exited(told.exit_code, tail)
        if beat.leaving:
            self._lose(node, "it left")

    async def _probe(self, node: Node) -> None:
        """The gateway's own look at the node, apart from Ray: whether its runners' ports
        can be reached. A port that refuses is a node that answers (its runner may be
        gone: the beat says); one that does not answer at all, three rounds in a row, is
        a node cut off or dead."""
        targets = {_address(server.base_url) for server in node.servers.values()}
        if not targets:
            node.unreachable = 0
            return
        reached = await asyncio.gather(*(_reachable(host, port) for host, port in targets))
        if any(reached):
            node.unreachable = 0
            return
        node.unreachable += 1
        if node.unreachable >= _MISSES:
            self._lose(node, f"its runners could not be reached {node.unreachable} times")

    def node_of(self, running: object) -> Node | None:
        """The node a running model runs on, if it runs on one of the cluster's."""
        node = self.nodes.get(getattr(running, "node", ""))
        return node if isinstance(running, RemoteServer) else None

    async def log(self, node: Node, name: str, lines: int) -> tuple[list[str], int]:
        """The last ``lines`` lines of model ``name``'s log on ``node``, and the offset of
        its end."""
        found: tuple[list[str], int] = await asyncio.wait_for(
            node.keeper.log.remote(name, lines), _LOG_TIMEOUT
        )
        return found

    async def follow_log(
        self, node: Node, name: str, offset: int, stop: asyncio.Event
    ) -> AsyncIterator[str]:
        """Lines model ``name``'s log on ``node`` gains after ``offset``, as they come,
        until ``stop`` is set or the node is gone."""
        while not stop.is_set() and self.nodes.get(node.name) is node:
            try:
                lines, offset = await asyncio.wait_for(
                    node.keeper.log_since.remote(name, offset), _LOG_TIMEOUT
                )
            except Exception:
                return
            for line in lines:
                yield line
            if not lines:
                await asyncio.sleep(_LOG_POLL)

    def _lose(self, node: Node, reason: str) -> None:
        if self.nodes.get(node.name) is not node:
            return  # lost already (the first signal won)
        log.warning("node %s lost: %s", node.name, reason)
        del self.nodes[node.name]
        self.lost[node.name] = (time.time(), reason)
        self._scheduler.leave(node.name, reason)
        for server in list(node.servers.values()):  # each leaves the dict as it exits
            server.exited(NODE_LOST, f"node {node.name} lost: {reason}", lost=True)
            if self._sever is not None:
                self._sever(server.base_url)


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or 80


async def _reachable(host: str, port: int) -> bool:
    """Whether ``host`` answers a connection to ``port`` within ``_PROBE_TIMEOUT`` (a
    refusal is an answer)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), _PROBE_TIMEOUT)
    except ConnectionRefusedError:
        return True
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _keeper_of(ray_id: str) -> Any:
    """The handle of the keeper on the Ray node ``ray_id`` (``ValueError``: none there)."""
    import ray

    return ray.get_actor(keeper_name(ray_id), NAMESPACE)


def _alive_nodes() -> dict[str, str]:
    """Ray's alive nodes: their address, by node id."""
    import ray

    found: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return {n["NodeID"]: n["NodeManagerAddress"] for n in found if n.get("Alive")}
