"""The accounts database on SQLite and PostgreSQL: migrations, balances under concurrency,
atomic ledger batches, usage totals."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from modelyard.accounts.balance import Wallets
from modelyard.accounts.identity import new_key
from modelyard.accounts.ledger import LedgerWriter
from modelyard.accounts.store import Store, UsageQuery, UsageRow
from modelyard.errors import ConflictError, NotFoundError


def row(n: int, key_id: str | None = None, cost: int = 3, **kw: object) -> UsageRow:
    values: dict[str, object] = {
        "time": time.time(),
        "request_id": f"r{n}",
        "key_id": key_id,
        "key_name": "k",
        "username": None,
        "user_id": None,
        "model": "m",
        "route": "/v1/chat/completions",
        "status": 200,
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "cost": cost,
        "queue_ms": 0.0,
        "load_ms": 0.0,
        "ttft_ms": 1.0,
        "total_ms": 2.0,
        "cancelled": False,
    }
    values.update(kw)
    return UsageRow(**values)  # type: ignore[arg-type]


async def add_key(store: Store, balance: int | None = None, user_id: int | None = None) -> str:
    _, ident, digest = new_key()
    await store.add_key(
        {
            "id": ident,
            "hash": digest,
            "name": f"k-{ident}",
            "role": "user",
            "priority": 1.0,
            "enabled": True,
            "balance": balance,
            "user_id": user_id,
        }
    )
    return ident


async def test_store_migrates_once_and_opens_again(database_url: str) -> None:
    store = await Store.open(database_url)
    ident = await add_key(store)
    secret = await store.secret("session")
    await store.close()
    again = await Store.open(database_url)  # the migrations are applied already
    try:
        assert (await again.key(ident)) is not None
        assert await again.secret("session") == secret
    finally:
        await again.close()


async def test_store_balance_never_goes_below_zero_under_concurrency(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        uid = await store.add_user("carol", {"role": "user", "balance": 60, "enabled": True})
        key = await add_key(store, balance=100, user_id=uid)
        # 40 gateways at once each want 8 tokens, or 3 at least.
        got = await asyncio.gather(*(store.take(("key", key), 8, 3) for _ in range(40)))
        assert all(n in (0, 3, 8) for n in got)
        assert sum(got) <= 100
        assert sum(got) >= 98  # it stops only when even 3 no longer fit
        record = await store.key(key)
        assert record is not None
        assert record["balance"] == 100 - sum(got)
        assert await store.take(("user", uid), 100, 61) == 0  # too little: nothing taken
        assert await store.take(("user", uid), 100, 60) == 60
        free = await add_key(store)
        assert await store.take(("key", free), 10**9, 10**9) is None  # no balance: unlimited
    finally:
        await store.close()


async def test_store_writes_a_batch_with_its_returns_or_nothing(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        key = await add_key(store, balance=100)
        assert await store.take(("key", key), 30, 30) == 30
        await store.write([row(1, key, cost=12)], {("key", key): 18})
        record = await store.key(key)
        assert record is not None
        assert record["balance"] == 88
        bad = row(2, key, route=None)  # NOT NULL: the whole batch fails
        with pytest.raises(Exception):  # noqa: B017, PT011 - the driver's own error class
            await store.write([row(3, key), bad], {("key", key): 5})
        assert len(await store.usage(UsageQuery())) == 1
        record = await store.key(key)
        assert record is not None
        assert record["balance"] == 88
    finally:
        await store.close()


async def test_wallets_reserve_from_hand_and_never_below_zero(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        uid = await store.add_user("dan", {"role": "user", "balance": 50, "enabled": True})
        key = await add_key(store, balance=1000, user_id=uid)
        wallets = Wallets(store)
        both = [("key", key), ("user", uid)]
        results = await asyncio.gather(*(wallets.reserve(both, 7) for _ in range(20)))
        assert sum(results) == 7  # the user's 50 hold 7 of them, on both or neither
        for _ in range(7):
            wallets.give_back(("key", key), 7)
            wallets.give_back(("user", uid), 7)
        writer = LedgerWriter(store, wallets)
        await writer.flush()  # what was in hand goes back with the batch
        record = await store.key(key)
        assert record is not None
        assert (record["balance"], record["user_balance"]) == (1000, 50)
        assert wallets.held(("key", key)) == 0
    finally:
        await store.close()


async def test_store_totals_usage_by_key_model_and_day(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        day = 1_780_000_000.0  # 2026-05-28 UTC
        rows = [
            row(1, "a", key_name="alpha", time=day),
            row(2, "a", key_name="alpha", time=day),
            row(3, "b", key_name="beta", model="n", time=day + 86400, status=429, cost=0),
        ]
        await store.write(rows)
        by_key = await store.usage_by(UsageQuery(), "key")
        assert by_key == [
            {
                "key": "alpha",
                "requests": 2,
                "prompt_tokens": 2,
                "completion_tokens": 4,
                "cost": 6,
                "errors": 0,
            },
            {
                "key": "beta",
                "requests": 1,
                "prompt_tokens": 1,
                "completion_tokens": 2,
                "cost": 0,
                "errors": 1,
            },
        ]
        by_day = await store.usage_by(UsageQuery(), "day")
        assert [(r["day"], r["requests"]) for r in by_day] == [("2026-05-28", 2), ("2026-05-29", 1)]
        only = await store.usage(UsageQuery(key="beta"))
        assert [r["request_id"] for r in only] == ["r3"]
        assert await store.usage(UsageQuery(since=day + 1)) == only
        assert await store.usage_by(UsageQuery(model="n"), "model") == [
            {
                "model": "n",
                "requests": 1,
                "prompt_tokens": 1,
                "completion_tokens": 2,
                "cost": 0,
                "errors": 1,
            }
        ]
    finally:
        await store.close()


async def test_store_names_that_look_like_sql_are_only_names(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        name = "x'; DROP TABLE users; --"
        await store.add_user(name, {"role": "user", "enabled": True})
        assert (await store.user(name))["name"] == name
        with pytest.raises(ConflictError):
            await store.add_user(name, {"role": "user", "enabled": True})
        with pytest.raises(NotFoundError):
            await store.find_key("' OR 1=1 --")
        assert [u["name"] for u in await store.users()] == [name]
    finally:
        await store.close()


async def test_ledger_writer_batches_and_flushes_at_close(database_url: str) -> None:
    store = await Store.open(database_url)
    writer = LedgerWriter(store, interval=0.05, batch=10)
    writer.start()
    try:
        for n in range(25):
            writer.append(row(n))
        for _ in range(100):
            if writer.written == 25:
                break
            await asyncio.sleep(0.02)
        assert writer.written == 25
        writer.append(row(99))
        await writer.close()  # written before close returns
        assert len(await store.usage(UsageQuery())) == 26
    finally:
        await store.close()


async def test_ledger_writer_keeps_rows_while_the_database_fails(tmp_path: object) -> None:
    class Failing:
        def __init__(self) -> None:
            self.fail = True
            self.rows: list[UsageRow] = []

        async def write(self, rows: list[UsageRow], returns: object = None) -> None:
            if self.fail:
                raise OSError("disk gone")
            self.rows.extend(rows)

    failing = Failing()
    writer = LedgerWriter(failing, interval=0.01)  # type: ignore[arg-type]
    writer.append(row(1))
    with pytest.raises(OSError, match="disk gone"):
        await writer.flush()
    assert writer.pending == 1
    failing.fail = False
    await writer.flush()
    assert [r.request_id for r in failing.rows] == ["r1"]


def test_store_schema_constant_is_the_newest_migration() -> None:
    from pathlib import Path

    from alembic.config import Config
    from alembic.script import ScriptDirectory

    import modelyard.accounts.store as store

    config = Config()
    config.set_main_option("script_location", str(Path(store.__file__).parent / "migrations"))
    assert ScriptDirectory.from_config(config).get_current_head() == store.SCHEMA


async def test_wallets_keep_a_busy_balance_in_hand_and_give_back_an_idle_one(
    tmp_path: Path,
) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    try:
        key = await add_key(store, balance=1000)
        wallets = Wallets(store)
        tasks = [wallets.reserve([("key", key)], 10) for _ in range(5)]
        assert all(await asyncio.gather(*tasks))  # one top-up of 8 requests' worth
        record = await store.key(key)
        assert record is not None
        assert record["balance"] == 1000 - 80
        assert wallets.drain(everything=False) == {}  # used in this interval: kept
        assert wallets.drain(everything=False) == {("key", key): 30}  # idle since: back
        wallets.give_back(("key", key), 10)
        assert wallets.drain() == {("key", key): 10}
    finally:
        await store.close()


def test_store_migrations_log_nothing_at_start(tmp_path: Path) -> None:
    """A fresh process opening a database prints no alembic lines (they used to be seven)."""
    import subprocess
    import sys

    code = (
        "import asyncio, logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
        "from modelyard.accounts.store import Store\n"
        "async def main():\n"
        f"    store = await Store.open('sqlite+aiosqlite:///{tmp_path / 'm.db'}')\n"
        "    await store.close()\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "alembic" not in done.stderr
