"""A runner that is not one of our programs still dies with the gateway (SIGKILL included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

PARENT = """
import subprocess, sys, time
child = subprocess.Popen(
    [sys.executable, "-m", "modelyard.workers.lifeline", "--", "sleep", "60"],
    env={**__import__("os").environ, "MODELYARD_PARENT_PID": str(__import__("os").getpid())},
)
print(child.pid, flush=True)
time.sleep(60)
"""


def test_lifeline_program_dies_with_its_killed_parent() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True
    ) as parent:
        assert parent.stdout is not None
        child = psutil.Process(int(parent.stdout.readline()))
        deadline = time.monotonic() + 10
        while child.name() != "sleep":  # exec'd: the same pid is now the program itself
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(parent.pid, signal.SIGKILL)
    child.wait(timeout=5)  # raises if it outlives the parent
    assert not child.is_running()


def test_lifeline_exits_when_the_parent_is_already_gone() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "modelyard.workers.lifeline", "--", "sleep", "60"],
        env={**os.environ, "MODELYARD_PARENT_PID": "1"},  # not our parent
        timeout=30,
    )
    assert result.returncode == 1
