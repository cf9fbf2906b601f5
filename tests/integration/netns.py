"""Machines of our own on this one: network namespaces joined by a bridge (root needed).

``Network(n)`` makes ``n`` namespaces, each with one address on a private /24 reached over a
bridge that lives in a namespace of its own: nothing is added to the root namespace, and no
traffic leaves the namespaces made here. ``cut(i)`` takes node ``i``'s link down (a network
partition); ``run(i, argv)`` starts a process there; ``Inside(i)`` runs calls in threads that
entered namespace ``i`` (their sockets are made there).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_CLONE_NEWNET = 0x40000000


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Network:
    def __init__(self, nodes: int) -> None:
        tag = os.getpid() % 100000
        self.bridge = f"my{tag}-br"
        self.names = [f"my{tag}-n{i}" for i in range(1, nodes + 1)]
        self.subnet = f"10.201.{tag % 250}"

    def address(self, i: int) -> str:
        """Node ``i``'s address (from 1)."""
        return f"{self.subnet}.{i}"

    def up(self) -> None:
        _ip("netns", "add", self.bridge)
        _ip("-n", self.bridge, "link", "set", "lo", "up")
        _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge, "link", "set", "br0", "up")
        for i, name in enumerate(self.names, 1):
            _ip("netns", "add", name)
            _ip(
                "-n",
                self.bridge,
                "link",
                "add",
                f"v{i}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                name,
            )
            _ip("-n", self.bridge, "link", "set", f"v{i}", "master", "br0")
            _ip("-n", self.bridge, "link", "set", f"v{i}", "up")
            _ip("-n", name, "link", "set", "lo", "up")
            _ip("-n", name, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")

    def down(self) -> None:
        for name in [*self.names, self.bridge]:
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                _ip("netns", "del", name)

    def cut(self, i: int) -> None:
        """Node ``i`` is cut off from the others (its link goes down, nothing else)."""
        _ip("-n", self.bridge, "link", "set", f"v{i}", "down")

    def argv(self, i: int, argv: list[str]) -> list[str]:
        """``argv`` run in node ``i``'s namespace."""
        return ["ip", "netns", "exec", self.names[i - 1], *argv]


class Inside:
    """Calls run in threads that entered node ``i``'s namespace."""

    def __init__(self, network: Network, i: int, threads: int = 8) -> None:
        path = f"/var/run/netns/{network.names[i - 1]}"
        self._pool = ThreadPoolExecutor(threads, initializer=_enter, initargs=(path,))

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._pool.submit(fn, *args, **kwargs).result()

    def start(self, fn: Callable[..., T], *args: Any) -> Any:
        """``fn(*args)`` under way; its future."""
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _enter(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)
