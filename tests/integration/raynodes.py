"""What the cluster tests share: bounded waits, and this test's Ray processes found (and
stopped) by the directories their command lines name, never with ``ray stop`` (it stops
every Ray process on the host)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx
import psutil
import pytest


def until(check: Callable[[], bool], limit: float, why: Callable[[], str]) -> float:
    """Seconds until ``check()`` holds (an HTTP error counts as not yet); fails with
    ``why()`` past ``limit``."""
    start = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        if time.monotonic() - start > limit:
            pytest.fail(why())
        time.sleep(0.2)


def ray_processes(dirs: Iterable[Path]) -> list[psutil.Process]:
    """Processes of this test's Ray nodes (their command lines name their directories)."""
    names = [str(d) for d in dirs]
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if any(name in line for name in names):
            found.append(proc)
    return found


def sweep(dirs: list[Path], limit: float = 15.0) -> list[int]:
    """Waits for the Ray processes of ``dirs`` to be gone, kills what is left, deletes the
    directories; the pids that had to be killed."""
    deadline = time.monotonic() + limit
    while (left := ray_processes(dirs)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for proc in left:
        proc.kill()
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)
    return [proc.pid for proc in left]


def cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""
