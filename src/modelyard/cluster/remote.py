"""The gateway's side of a node's runners: a ``Runner`` that asks the node's keeper to start
a model, and the ``RunningModel`` it gets back, reached directly at its HTTP address.

The scheduler and ``api.dispatch`` see them as any other runner: requests go from the gateway
to the runner's port on its node over pooled keep-alive connections, never through Ray. What
only Ray can tell (the runner's memory, its exit, its node's loss) comes from the keeper's
beat (``members.Cluster``), which sets it here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from modelyard.catalog.spec import Footprint, ModelSpec
from modelyard.cluster.keeper import Started
from modelyard.engines.llamacpp.warm import BOUND as SAVE_BOUND
from modelyard.errors import LoadFailedError, ModelyardError
from modelyard.runners.base import KvNews, Runner, RunningModel

NODE_LOST = -9
"""The exit code of a runner whose node is lost (as if SIGKILLed: nothing of it is left)."""
_CALL_SLACK = 10.0
"""Seconds a keeper's call may take beyond the work it waits for."""


def _cause(exc: BaseException) -> str:
    """What went wrong on the node, without Ray's wrapping."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, ModelyardError):
        return cause.message
    return str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__


class RemoteWarm:
    """A remote runner's warm swaps (a ``Warm``): its keeper saves and restores them on its
    node, and what it did is told here."""

    def __init__(self, keeper: Any, ident: int, restored: tuple[KvNews, ...]) -> None:
        self._keeper = keeper
        self._ident = ident
        self._restored = restored
        self.tell: Callable[[KvNews], None] = _unheard

    async def restore(self) -> None:
        """Its keeper restored as it started it: what that did is told now."""
        for news in self._restored:
            self.tell(news)
        self._restored = ()

    async def save(self) -> None:
        ref = self._keeper.save.remote(self._ident)
        saved: list[KvNews] = await asyncio.wait_for(ref, SAVE_BOUND + _CALL_SLACK)
        for news in saved:
            self.tell(news)


def _unheard(news: KvNews) -> None:
    pass


class RemoteServer:
    """A runner on a cluster's node (a ``RunningModel``)."""

    def __init__(
        self,
        keeper: Any,
        node: str,
        started: Started,
        servers: dict[int, RemoteServer] | None = None,
    ) -> None:
        """``servers``: its node's runners, by id, that it is in until it exits."""
        self._keeper = keeper
        self._servers = servers if servers is not None else {}
        self._servers[started.id] = self
        self.node = node
        self.id = started.id
        self.pid = started.pid
        self._base_url = started.base_url
        self._headers = started.headers
        self._footprint: Footprint = dict(started.footprint)
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._tail = ""
        self._lost = False
        self.warm = RemoteWarm(keeper, started.id, started.news) if started.warm else None

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    def footprint(self) -> Footprint:
        """What its processes held at the keeper's last beat."""
        return dict(self._footprint)

    def beat(self, footprint: Footprint) -> None:
        self._footprint = dict(footprint)

    @property
    def node_lost(self) -> bool:
        """It ended with its node (not on its own): its model is not to blame."""
        return self._lost

    def exited(self, code: int, tail: str = "", *, lost: bool = False) -> None:
        """It has exited (told by its keeper's beat), or its node is ``lost``."""
        self._lost = self._lost or (lost and not self._exit.done())
        if self._servers.get(self.id) is self:
            del self._servers[self.id]
        if not self._exit.done():
            self._tail = tail
            self._exit.set_result(code)

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    async def stop(self, grace: float) -> None:
        if self._exit.done():
            return
        try:
            ref = self._keeper.stop.remote(self.id, grace)
            code = await asyncio.wait_for(ref, grace + _CALL_SLACK)
        except Exception:  # the node is gone or unreachable: its keeper fences it
            code = NODE_LOST
        self.exited(code if code is not None else NODE_LOST)

    def log_tail(self, max_bytes: int = 2000) -> str:
        return self._tail[-max_bytes:]


class NodeRunner:
    """Starts one engine's models on a node, through its keeper (a ``Runner``)."""

    def __init__(
        self, local: Runner, keeper: Any, node: str, servers: dict[int, RemoteServer]
    ) -> None:
        self._local = local
        self._keeper = keeper
        self._node = node
        self._servers = servers
        self.reads_files = getattr(local, "reads_files", False)

    def estimate(self, spec: ModelSpec) -> Footprint:
        """As on this machine: a node reads the same model files, at the same paths."""
        return self._local.estimate(spec)

    async def start(self, spec: ModelSpec) -> RunningModel:
        ref = self._keeper.start.remote(spec)
        try:
            started: Started = await ref
        except asyncio.CancelledError:
            import ray

            with contextlib.suppress(Exception):
                ray.cancel(ref)  # the keeper stops what it was starting
            raise
        except Exception as exc:
            raise LoadFailedError(f"on node {self._node}: {_cause(exc)}") from None
        return RemoteServer(self._keeper, self._node, started, self._servers)
