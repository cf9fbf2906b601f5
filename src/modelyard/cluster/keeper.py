"""A node's keeper: starts and stops runners on its node, as the gateway tells it.

One per node, a Ray actor pinned to the node (``modelyard join`` starts it). It runs the
same runners as a single machine (``engines.default_runners``), bound to the node's address
so that the gateway reaches them, each with its own key and parent-death lifeline: when Ray
kills the keeper (its node is lost, or ``join`` is stopped), its runners die with it.

The gateway calls ``beat`` every second; it answers each runner's memory and whether it has
exited. A keeper that hears no beat for ``fence_after`` seconds is cut off from the gateway
(a network partition): it stops its runners, so that a node the cluster has given up on
never goes on serving (fencing).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from modelyard.catalog.spec import Footprint, ModelSpec
from modelyard.engines import default_runners
from modelyard.errors import LoadFailedError
from modelyard.logbook import Rotation, log_path, tail
from modelyard.runners.base import KvNews, Runner, RunningModel, warm_of
from modelyard.runners.gpu import detect
from modelyard.runners.process import bind_runners
from modelyard.scheduler.budget import resolve_budget

log = logging.getLogger(__name__)

NAMESPACE = "modelyard"
"""The Ray namespace of modelyard's actors."""
FENCE_AFTER = 10.0
"""Seconds without a beat from the gateway after which a keeper stops its runners."""


_LOG_READ = 1 << 20
"""The most of a log one ``log_since`` reads."""


def _lines_since(path: Path, offset: int) -> tuple[list[str], int]:
    try:
        with path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            if end < offset:  # rotated: the new file from its start
                offset = 0
            f.seek(offset)
            data = f.read(min(end - offset, _LOG_READ))
    except FileNotFoundError:
        return [], 0
    whole = data.rfind(b"\n") + 1
    return data[:whole].decode("utf-8", errors="replace").splitlines(), offset + whole


def keeper_name(node_id: str) -> str:
    """The Ray actor name of the keeper of the Ray node ``node_id``."""
    return f"keeper:{node_id}"


@dataclass(frozen=True)
class NodeInfo:
    """What a keeper says of its node."""

    name: str
    ip: str
    budget: Footprint
    hostname: str
    pid: int
    leaving: bool = False
    """``join`` is stopping: the node takes nothing more."""


@dataclass(frozen=True)
class Started:
    """A runner a keeper started: how to reach it."""

    id: int
    base_url: str
    headers: dict[str, str]
    pid: int | None
    footprint: Footprint
    """Its memory as it became ready."""
    warm: bool = False
    """It keeps conversations across unloads (warm swaps): ask ``save`` before stopping it."""
    news: tuple[KvNews, ...] = ()
    """What its restore of saved conversations did."""


@dataclass(frozen=True)
class RunnerBeat:
    footprint: Footprint
    exit_code: int | None
    """``None`` while it runs."""


@dataclass(frozen=True)
class Beat:
    """A keeper's answer to the gateway's beat."""

    runners: dict[int, RunnerBeat]
    leaving: bool = False
    """Its node is leaving the cluster (``join`` was stopped): it takes no more runners."""


class Keeper:
    """See the module docstring; a plain class, made a Ray actor by ``join``."""

    def __init__(
        self,
        *,
        name: str,
        ip: str,
        home: str,
        ram: str | int = "90%",
        gpu: str | int = "90%",
        fence_after: float = FENCE_AFTER,
        log_max_size: int = 10 << 20,
        log_files: int = 3,
        runners: Mapping[str, Runner] | None = None,
    ) -> None:
        """``runners``: the engines' own (``default_runners``) unless a test gives some."""
        bind_runners(ip)
        gpus = detect()
        self._info = NodeInfo(
            name, ip, resolve_budget(ram, gpu, gpus), socket.gethostname(), os.getpid()
        )
        self._runners: Mapping[str, Runner] = runners or default_runners(
            Path(home), Rotation(log_max_size, log_files), gpus
        )
        self._logs = Path(home) / "logs"
        self._running: dict[int, RunningModel] = {}
        self._exits: dict[int, int] = {}
        self._tails: dict[int, str] = {}
        """The last output of runners that exited on their own (until it is asked)."""
        self._watchers: dict[int, asyncio.Task[None]] = {}
        self._ids = itertools.count(1)
        self._fence_after = fence_after
        self._last_beat = time.monotonic()
        self._fence: asyncio.Task[None] | None = None
        self._leaving = False

    async def describe(self) -> NodeInfo:
        """Its node: name, address, budget per device. A gateway asks when it finds the
        node (it started, or lost the node and found it again): it knows none of the
        runners running here, so any left over are stopped."""
        self._heard()
        if self._leaving:
            return replace(self._info, leaving=True)
        await self._stop_all("a gateway found this node anew")
        return self._info

    async def start(self, spec: ModelSpec) -> Started:
        """Starts ``spec``'s runner and returns once it serves (``LoadFailedError`` if not)."""
        self._heard()
        if self._leaving:
            raise LoadFailedError(f"node {self._info.name} is leaving the cluster")
        running = await self._runners[spec.engine].start(spec)
        try:
            news = await self._restore(running)
        except BaseException:  # cancelled by the gateway: nothing is left running
            await asyncio.shield(running.stop(1.0))
            raise
        ident = next(self._ids)
        self._running[ident] = running
        self._watchers[ident] = asyncio.create_task(self._watch(ident, running))
        pid = getattr(running, "pid", None)
        footprint = running.footprint()
        warm = warm_of(running) is not None
        return Started(
            ident, running.base_url, dict(running.headers), pid, footprint, warm, tuple(news)
        )

    async def save(self, ident: int) -> list[KvNews]:
        """Saves a runner's conversations before it is stopped (warm swaps); what it did."""
        self._heard()
        running = self._running.get(ident)
        warm = warm_of(running) if running is not None else None
        if warm is None:
            return []
        news: list[KvNews] = []
        warm.tell = news.append
        try:
            await warm.save()
        except Exception:
            log.exception("saving the slots of runner %d failed", ident)
        return news

    async def _restore(self, running: RunningModel) -> list[KvNews]:
        """Puts back what the model kept at its last unload on this node, if it keeps
        anything; a failure costs the conversations, never the load."""
        warm = warm_of(running)
        if warm is None:
            return []
        news: list[KvNews] = []
        warm.tell = news.append
        try:
            await warm.restore()
        except Exception:
            log.exception("restoring the slots of %s failed", running.base_url)
        return news

    async def stop(self, ident: int, grace: float) -> int | None:
        """Stops a runner; its exit code (``None`` if it was not known)."""
        self._heard()
        running = self._running.get(ident)
        if running is None:
            return self._exits.pop(ident, None)
        self._forget(ident)  # its exit is this answer, not a beat's
        await asyncio.shield(running.stop(grace))  # a call given up on still stops it
        return await running.wait()

    async def beat(self) -> Beat:
        """Each runner's memory now and whether it exited (an exit is told once)."""
        self._heard()
        found = {i: RunnerBeat(r.footprint(), None) for i, r in self._running.items()}
        for ident, code in self._exits.items():
            found[ident] = RunnerBeat({}, code)
        self._exits.clear()
        return Beat(found, self._leaving)

    async def leave(self, grace: float) -> None:
        """Its node leaves: every runner is stopped (``grace`` seconds each), the gateway
        is told at its next beat."""
        self._leaving = True
        running = list(self._running.items())
        await asyncio.gather(*(r.stop(grace) for _, r in running), return_exceptions=True)
        for ident, r in running:
            if ident in self._running:
                self._exits[ident] = await r.wait()
                self._forget(ident)

    async def log_tail(self, ident: int) -> str:
        """The last lines a runner wrote (one that exited: once)."""
        running = self._running.get(ident)
        return running.log_tail() if running is not None else self._tails.pop(ident, "")

    async def log(self, name: str, lines: int) -> tuple[list[str], int]:
        """The last ``lines`` lines of model ``name``'s log on this node, and the offset
        of its end."""
        try:
            return await asyncio.to_thread(tail, log_path(self._logs, name), lines)
        except FileNotFoundError:
            return [], 0

    async def log_since(self, name: str, offset: int) -> tuple[list[str], int]:
        """The whole lines model ``name``'s log gained after ``offset`` (from its start
        when it was rotated meanwhile), at most 1 MiB of them, and the offset after them."""
        return await asyncio.to_thread(_lines_since, log_path(self._logs, name), offset)

    async def _watch(self, ident: int, running: RunningModel) -> None:
        code = await running.wait()
        if self._running.get(ident) is running:
            self._exits[ident] = code
            self._tails[ident] = running.log_tail()
            self._forget(ident)

    def _forget(self, ident: int) -> None:
        self._running.pop(ident, None)
        watcher = self._watchers.pop(ident, None)
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()

    def _heard(self) -> None:
        self._last_beat = time.monotonic()
        if self._fence is None:
            self._fence = asyncio.create_task(self._guard())

    async def _guard(self) -> None:
        """Stops every runner once the gateway has not been heard for ``fence_after``."""
        while True:
            await asyncio.sleep(min(1.0, self._fence_after / 4))
            silent = time.monotonic() - self._last_beat
            if silent < self._fence_after or not self._running:
                continue
            await self._stop_all(f"no word from the gateway for {silent:.0f}s")

    async def _stop_all(self, why: str) -> None:
        """Stops every runner, at once, and forgets them."""
        running = list(self._running.items())
        if not running:
            return
        log.warning("%s: stopping every runner", why)
        for ident, _ in running:
            self._forget(ident)
        for _, r in running:
            with contextlib.suppress(Exception):
                await r.stop(0.0)

    def __repr__(self) -> str:  # Ray names the actor's process with it
        return f"Keeper({self._info.name})"
