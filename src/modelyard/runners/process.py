"""A model server as a child process of ours: own process group, log file, no orphans.

The child's stdout and stderr come to the gateway through a pipe and are written to the
model's log (``modelyard.logbook``), rotated by size however long the runner runs; the
tail of the current run is kept in memory for error messages.

The child runs in a new session (its own process group, so a stop reaches every process it
starts) and gets SIGKILL from the kernel when the gateway dies, even by SIGKILL
(``PR_SET_PDEATHSIG``, set by the child itself: see ``modelyard.workers.lifeline``).
Stopping sends SIGTERM to the group, then SIGKILL after a grace period.

Each child gets a random key that only the gateway knows: a runner answers only requests
that carry it (its ``/health`` excepted), so nothing on the machine can reach a model
around the gateway's queues and budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import aiohttp
import psutil

from modelyard.catalog.spec import Footprint
from modelyard.errors import LoadFailedError
from modelyard.logbook import DEFAULT_ROTATION, RotatingLog, Rotation
from modelyard.runners.gpu import Gpus, NoGpus, device
from modelyard.workers.lifeline import PARENT_ENV

log = logging.getLogger(__name__)

_TAIL_BYTES = 8192
"""The end of a run's output kept in memory (for errors)."""
# /health is polled this often while a model loads: readiness is noticed within ~10 ms.
_HEALTH_POLL = 0.01
_CONTROL_TIMEOUT = 300.0
"""Seconds a server may take to go to sleep or wake up (weights move to or from RAM)."""


_host = "127.0.0.1"
"""Where runners listen: loopback, or on a cluster's node its address (``bind_runners``)."""


def bind_runners(host: str) -> None:
    """Runners started from now on in this process listen on ``host`` (a cluster node's
    keeper binds them to the node's address, which the gateway reaches)."""
    global _host
    _host = host


def runner_host() -> str:
    """The address runners listen on (``127.0.0.1`` unless ``bind_runners`` said)."""
    return _host


def free_port(host: str | None = None) -> int:
    """A port free now on ``host`` (the runners' address by default)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host or _host, 0))
        return int(s.getsockname()[1])


def runner_key() -> str:
    """A fresh secret for one runner process: hex, so that it never starts with ``-`` (a
    command line such as vLLM's ``--api-key {key}`` would read that as another flag)."""
    return secrets.token_hex(24)


_CHILDREN_LISTED = os.path.exists(f"/proc/self/task/{os.getpid()}/children")
"""Linux lists each thread's children in ``/proc`` (``CONFIG_PROC_CHILDREN``, which
distributions' kernels have)."""


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process it started, and theirs. Read from its own tree's
    ``/proc/PID/task/TID/children`` where Linux lists them: psutil's ``children`` reads the
    ``stat`` of every process on the host, for each runner at every measurement, which on a
    busy host costs more than the measurement. ``psutil.Error`` if ``pid`` is gone."""
    if not _CHILDREN_LISTED:
        root = psutil.Process(pid)
        return [pid, *(child.pid for child in root.children(recursive=True))]
    tree = [pid]
    for parent in tree:  # the list grows as the walk goes down
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except FileNotFoundError:
            if parent == pid:
                raise psutil.NoSuchProcess(pid) from None
            continue  # exited meanwhile
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as listed:
                    tree.extend(int(child) for child in listed.read().split())
            except (FileNotFoundError, ProcessLookupError):
                continue
    return tree


@dataclass(frozen=True)
class Lifecycle:
    """How a server says it is ready and how it is asked to stop."""

    health: str = "/health"
    health_status: int = 200
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float | None = None
    """Seconds between ``stop_signal`` and SIGKILL; ``None``: what the caller gives."""


DEFAULT_LIFECYCLE = Lifecycle()


class ChildServer:
    """A running child process serving HTTP at ``base_url`` (a ``RunningModel``)."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        base_url: str,
        log: RotatingLog,
        key: str | None = None,
        lifecycle: Lifecycle = DEFAULT_LIFECYCLE,
        gpus: Gpus | None = None,
    ) -> None:
        self._process = process
        self._gpus = gpus or NoGpus()
        self._base_url = base_url
        self._lifecycle = lifecycle
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self._pump = asyncio.create_task(self._copy_output(log), name=f"log of {process.pid}")

    @classmethod
    async def spawn(
        cls,
        argv: Sequence[str],
        *,
        port: int,
        log_path: Path,
        rotation: Rotation = DEFAULT_ROTATION,
        env: Mapping[str, str] | None = None,
        key: str | None = None,
        lifeline: bool = False,
        lifecycle: Lifecycle = DEFAULT_LIFECYCLE,
        gpus: Gpus | None = None,
    ) -> Self:
        """Starts ``argv`` with ``env`` added to ours (``gpus``: to measure its GPU memory).

        ``lifeline``: the program does not set its own parent-death signal (it is not one of
        our workers), so it is started through ``modelyard.workers.lifeline``.
        """
        log_file = RotatingLog(log_path, rotation)
        header = f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n"
        log_file.write(header.encode())
        if lifeline:
            argv = [sys.executable, "-m", "modelyard.workers.lifeline", "--", *argv]
        environ = {**os.environ, **(env or {}), PARENT_ENV: str(os.getpid())}
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=environ,
                start_new_session=True,
            )
        except OSError as exc:
            log_file.close()
            raise LoadFailedError(f"cannot start {argv[0]}: {exc.strerror or exc}") from exc
        return cls(process, f"http://{_host}:{port}", log_file, key, lifecycle, gpus)

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        *,
        port: int,
        log_path: Path,
        load_timeout: float,
        rotation: Rotation = DEFAULT_ROTATION,
        env: Mapping[str, str] | None = None,
        key: str | None = None,
        lifeline: bool = False,
        lifecycle: Lifecycle = DEFAULT_LIFECYCLE,
        gpus: Gpus | None = None,
    ) -> Self:
        """Spawns the server and returns once it is healthy; stops it if it never gets there."""
        server = await cls.spawn(
            argv,
            port=port,
            log_path=log_path,
            rotation=rotation,
            env=env,
            key=key,
            lifeline=lifeline,
            lifecycle=lifecycle,
            gpus=gpus,
        )
        try:
            await server.wait_healthy(load_timeout)
        except BaseException:
            await asyncio.shield(server.stop(grace=1.0))
            raise
        return server

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    @property
    def pid(self) -> int:
        return self._process.pid

    def footprint(self) -> Footprint:
        """Resident memory of the process and its descendants, and what they hold on each
        GPU (NVML's per-process figures)."""
        try:
            pids = process_tree(self._process.pid)
        except psutil.Error:
            return {"ram": 0}
        total = 0
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                total += psutil.Process(pid).memory_info().rss
        footprint = {"ram": total}
        for index, amount in self._gpus.used_by(pids).items():
            footprint[device(index)] = amount
        return footprint

    async def wait(self) -> int:
        code = await self._process.wait()
        await self._drained()
        return code

    async def _copy_output(self, log_file: RotatingLog) -> None:
        stream = self._process.stdout
        assert stream is not None
        try:
            while data := await stream.read(65536):
                log_file.write(data)
                self._tail.append(data)
                self._tail_size += len(data)
                while self._tail_size - len(self._tail[0]) >= _TAIL_BYTES:
                    self._tail_size -= len(self._tail.popleft())
        except OSError:
            log.exception("writing the log of runner %d failed", self._process.pid)
        finally:
            log_file.close()

    async def _drained(self, limit: float = 1.0) -> None:
        """Waits (briefly: a grandchild may hold the pipe open) for the output to be in."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._pump), limit)

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, sig)

    async def stop(self, grace: float) -> None:
        if self._lifecycle.stop_timeout is not None:
            grace = self._lifecycle.stop_timeout
        if self._process.returncode is None:
            sig = self._lifecycle.stop_signal
            self._signal_group(sig)
            try:
                await asyncio.wait_for(self._process.wait(), grace)
            except TimeoutError:
                log.warning("runner %d ignored %s for %.1fs; killing", self.pid, sig.name, grace)
        # Whatever is left in the group (grandchildren included) goes now.
        self._signal_group(signal.SIGKILL)
        await self.wait()

    async def sleep(self, level: int) -> None:
        """vLLM's sleep mode: ``POST /sleep?level=N`` (a ``Sleeper``)."""
        await self._post(f"/sleep?level={level}")

    async def wake(self) -> None:
        """``POST /wake_up``."""
        await self._post("/wake_up")

    async def _post(self, path: str) -> None:
        timeout = aiohttp.ClientTimeout(total=_CONTROL_TIMEOUT)
        url = self._base_url + path
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, headers=self._headers) as response,
        ):
            if response.status >= 300:
                text = (await response.text())[:300]
                raise LoadFailedError(f"POST {path} answered {response.status}: {text}")

    def log_tail(self, max_bytes: int = 2000) -> str:
        """The end of what this run printed."""
        data = b"".join(self._tail)[-max_bytes:]
        return data.decode("utf-8", errors="replace").strip()

    async def wait_healthy(self, limit: float) -> None:
        """Polls the health path until it answers the expected status (``/health``, 200);
        fails fast if the process exits."""
        deadline = time.monotonic() + limit
        url = self._base_url + self._lifecycle.health
        expected = self._lifecycle.health_status
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                if self._process.returncode is not None:
                    await self._drained()
                    raise LoadFailedError(
                        f"runner exited with code {self._process.returncode} while loading:\n"
                        f"{self.log_tail()}"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url, headers=self._headers) as response:
                        if response.status == expected:
                            return
                if time.monotonic() > deadline:
                    await self.stop(grace=1.0)
                    raise LoadFailedError(
                        f"runner not healthy after {limit:.0f}s:\n{self.log_tail()}"
                    )
                await asyncio.sleep(_HEALTH_POLL)
