"""The serving process's own settings."""

from __future__ import annotations

import resource
import subprocess
import sys


def test_the_open_files_limit_is_raised_to_what_the_system_allows() -> None:
    # In a child: the limit is the process's own.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    code = (
        "import resource\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "from modelyard.server import open_files_limit\n"
        "print(open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    returned, now = (int(n) for n in out.stdout.split())
    assert returned == now
    expected = 65536 if hard == resource.RLIM_INFINITY else hard
    assert now == expected > 256, (soft, hard)
