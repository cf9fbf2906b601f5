"""Runner processes die with the gateway, even when it is killed with SIGKILL.

The gateway has threads, so it cannot safely run Python code between ``fork`` and ``exec``
(``preexec_fn``). Instead each runner asks the kernel itself for a signal when its parent
dies (``PR_SET_PDEATHSIG``), as the first thing it does: our own workers call ``hold()``;
any other program (a user's ``llama-server``) is started through this module, which sets
the signal and then ``exec``s it (the setting survives ``exec``)::

    python -m modelyard.workers.lifeline -- PROGRAM ARGS...

The gateway's pid comes in ``MODELYARD_PARENT_PID``: if the process's parent is no longer
that pid by the time the signal is set, the gateway died before, and the runner exits.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Mapping

PARENT_ENV = "MODELYARD_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def hold(environ: Mapping[str, str] = os.environ) -> None:
    """Dies with the gateway (a no-op when not started by one)."""
    parent = environ.get(PARENT_ENV)
    if not parent:
        return
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if str(os.getppid()) != parent:
        os._exit(1)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.exit("usage: python -m modelyard.workers.lifeline -- PROGRAM ARGS...")
    hold()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        sys.exit(f"cannot start {argv[0]}: {exc.strerror or exc}")


if __name__ == "__main__":
    main(sys.argv[1:])
