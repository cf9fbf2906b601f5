#!/usr/bin/env python3
"""What a change costs on the request path: B1 (sequential latency, gateway CPU) and B2
(saturation, c=16) through this checkout's gateway and through the same gateway at another
commit, interleaved rounds in one run, both pinned to the same core.

    .venv/bin/python bench/versus.py BASE [--keys] [--rounds 7 --requests 300 --saturation 1000]

BASE is any git revision; its ``src`` is checked out into a temporary worktree and put first
on the base gateway's ``PYTHONPATH`` (same virtual environment, same canned responder).
``--keys``: both gateways require keys, and the scenarios' key has a token balance (every
request reserved and settled), as a shared server runs.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
from pathlib import Path

from accounts import keyed
from common import ROOT, Gateway
from observability import canned, cost_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--saturation", type=int, default=1000)
    parser.add_argument("--keys", action="store_true")
    args = parser.parse_args()
    tree = Path(tempfile.mkdtemp(prefix="modelyard-base-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree),
                    args.base], check=True)  # fmt: skip
    try:
        config = canned(["canned"])
        alone = {"MODELYARD_DEMO": "false"}  # one model in each catalog (older code ignores it)
        older = {**alone, "PYTHONPATH": str(tree / "src")}
        if args.keys:
            this = keyed(config, alone, balance=10**14)
            base = keyed(config, older, balance=10**14)
        else:
            this = Gateway(config, core=0, env=alone)
            base = Gateway(config, core=0, env=older)
        rows = asyncio.run(
            cost_of(this, base, args.rounds, args.requests, args.saturation, "this/base")
        )
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                       check=False)  # fmt: skip
        shutil.rmtree(tree.parent, ignore_errors=True)
    keys = " (keys required, a balance on the key)" if args.keys else ""
    print(f"B1/B2 of this checkout against {args.base}{keys}")
    print(f"{'':50s} {'this':>10s} {'base / target':>14s}")
    for label, value, other in rows:
        print(f"{label:50s} {value:10.3f} {other:14.3f}")


if __name__ == "__main__":
    main()
