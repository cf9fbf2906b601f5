#!/usr/bin/env python3
"""What accounts cost (issue 12): B1 (sequential latency, gateway CPU) and B2 (saturation,
c=16) with API keys required and the usage ledger writing, against the same gateway with keys
off and no ledger, interleaved rounds in one run; then the same with a token balance on the
key (a reservation in the database per request); and the ledger's sustained write rate on
SQLite and on PostgreSQL (a server started from the machine's binaries, as the tests do).

    .venv/bin/python bench/accounts.py [--rounds 7 --requests 300 --saturation 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx

from common import ROOT, Gateway
from observability import canned, cost_of

OFF = "[server]\nusage_ledger = false\n"
KEYS = {"MODELYARD_AUTH": "keys"}


def keyed(config: str, env: dict[str, str] | None = None, **key: object) -> Gateway:
    """A gateway that requires keys, and a key for the scenarios (``key``: its limits)."""
    gateway = Gateway(config, core=0, env={**KEYS, **(env or {})})
    printed = re.search(rb"^\s+(my-\w+)\s*$", (gateway.home / "gateway.log").read_bytes(), re.M)
    assert printed is not None, "no admin key printed"
    gateway.admin = {"Authorization": f"Bearer {printed.group(1).decode()}"}
    made = httpx.post(
        f"{gateway.url}/api/keys", json={"name": "bench", **key}, headers=gateway.admin
    )
    made.raise_for_status()
    gateway.headers = {"Authorization": f"Bearer {made.json()['key']}"}
    return gateway


async def ledger_rate(url: str, rows: int) -> float:
    sys.path.insert(0, str(ROOT / "src"))
    from modelyard.accounts.store import Store, UsageRow

    store = await Store.open(url)
    row = UsageRow(time.time(), "r", "k", "bench", None, None, "canned", "/v1/chat/completions",
                   200, 5, 7, 12, 0.1, 0.0, 1.0, 2.0, False)  # fmt: skip
    try:
        started = time.perf_counter()
        for _ in range(rows // 500):
            await store.write([row] * 500)  # what the writer does: 500 rows a transaction
        return rows / (time.perf_counter() - started)
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--saturation", type=int, default=1000)
    parser.add_argument("--ledger-rows", type=int, default=100_000)
    args = parser.parse_args()
    config = canned(["canned"])
    table = []
    for label, key in (("keys + ledger", {"rpm": 10**8, "tpm": 10**9}),
                       ("keys + ledger + balance", {"balance": 10**14})):  # fmt: skip
        on = keyed(config, **key)
        off = Gateway(canned(["canned"], OFF), core=0)
        rows = asyncio.run(cost_of(on, off, args.rounds, args.requests, args.saturation))
        table += [(f"[{label} / off] {name}", a, b) for name, a, b in rows]
    sqlite = f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp()) / 'ledger.db'}"
    table.append(("ledger rows/s, SQLite", asyncio.run(ledger_rate(sqlite, args.ledger_rows)), 0))
    sys.path.insert(0, str(ROOT))
    from tests.postgres import PostgresServer

    server = PostgresServer(durable=True)
    try:
        url = asyncio.run(server.new_database())
        rate = asyncio.run(ledger_rate(url, args.ledger_rows))
        table.append(("ledger rows/s, PostgreSQL 15", rate, 0))
    finally:
        server.stop()
    print(f"{'':70s} {'on':>10s} {'off / target':>14s}")
    for name, value, other in table:
        print(f"{name:70s} {value:10.3f} {other:14.3f}")


if __name__ == "__main__":
    main()
