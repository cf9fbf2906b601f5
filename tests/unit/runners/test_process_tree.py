"""A runner's memory counts every process it started: the tree read from its own ``/proc``
entries is the one psutil finds by reading every process on the host."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import psutil
import pytest

from modelyard.runners import process
from modelyard.runners.process import process_tree

# A parent with two children, one of which has a child of its own.
SCRIPT = "sleep 60 & sh -c 'sleep 60 & wait' & wait"


@pytest.fixture
def tree() -> Iterator[int]:
    parent = subprocess.Popen(["sh", "-c", SCRIPT], start_new_session=True)
    try:
        root = psutil.Process(parent.pid)
        deadline = time.monotonic() + 10
        while len(root.children(recursive=True)) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        yield parent.pid
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()


def test_process_tree_is_the_process_and_all_its_descendants(tree: int) -> None:
    found = process_tree(tree)
    descendants = psutil.Process(tree).children(recursive=True)
    assert len(descendants) == 3  # a sleep, the inner sh, and its sleep
    assert sorted(found) == sorted([tree, *(p.pid for p in descendants)])


def test_process_tree_without_the_proc_lists_asks_psutil(
    tree: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed = sorted(process_tree(tree))
    monkeypatch.setattr(process, "_CHILDREN_LISTED", False)
    assert sorted(process_tree(tree)) == listed


def test_process_tree_of_a_process_gone_is_an_error() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    with pytest.raises(psutil.NoSuchProcess):
        process_tree(gone.pid)
