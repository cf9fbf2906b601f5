"""Balances, the ledger, usage and fair share through the app (canned responder), on
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import io
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelyard.accounts.identity import Role
from modelyard.accounts.service import Accounts
from modelyard.accounts.store import UsageQuery
from tests.unit.api.conftest import Harness, canned_spec, until
from tests.unit.api.test_auth import bearer, make_key

CHAT = {"model": "canned", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


async def usage_rows(h: Harness, admin: str, **params: str) -> list[dict[str, Any]]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    answer = await h.call(f"/api/usage?limit=100000&{query}", method="GET", headers=bearer(admin))
    assert answer.status == 200, answer.body
    rows: list[dict[str, Any]] = answer.json()["rows"]
    return rows


async def test_accounts_balances_hold_under_200_concurrent_requests(
    make_harness: Callable, tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """10 keys with small balances send 200 requests at once: no balance goes below zero,
    what was charged is what the ledger says, every refusal is insufficient_quota, and each
    charge was settled by the serving layer beside its lease."""
    spec = canned_spec(tmp_path, parallel=8, max_queue=500)
    async with make_harness(spec, auth_mode="keys", database_url=database_url) as h:
        admin = await make_key(h, Role.ADMIN, name="root")
        start = 300
        keys = [await make_key(h, name=f"k{n}", balance=start) for n in range(10)]
        answers = await asyncio.gather(
            *(
                h.call("/v1/chat/completions", CHAT, headers=bearer(keys[n % 10]))
                for n in range(200)
            )
        )
        statuses = Counter(a.status for a in answers)
        assert set(statuses) <= {200, 429}, statuses
        assert statuses[200] >= 10  # each key could afford at least one
        assert statuses[429] > 0  # and not all twenty
        for answer in answers:
            if answer.status == 429:
                assert answer.json()["error"]["code"] == "insufficient_quota"
        accounts: Accounts = h.app.state.accounts
        await accounts.ledger.flush()
        rows = await usage_rows(h, admin)
        assert len(rows) == 200
        for n, key in enumerate(keys):
            record = await accounts.store.find_key(f"k{n}")
            assert record["balance"] >= 0
            charged = start - record["balance"]
            billed = sum(r["cost"] for r in rows if r["key_name"] == f"k{n}")
            assert charged == billed
            served = sum(1 for r in rows if r["key_name"] == f"k{n}" and r["status"] == 200)
            assert billed == 12 * served  # the canned answer's 5 + 7 tokens, price 1
            assert key  # used above
        assert "unsettled" not in caplog.text


async def test_accounts_stream_usage_is_asked_for_and_left_out_again(
    make_harness: Callable,
) -> None:
    async with make_harness(auth_mode="keys") as h:
        key = await make_key(h, balance=1000)
        plain = await h.call(
            "/v1/chat/completions", {**CHAT, "stream": True, "x_chunks": 3}, headers=bearer(key)
        )
        events = plain.events()
        assert events[-1] == "[DONE]"
        assert not any("usage" in e for e in events if isinstance(e, dict))
        asked = await h.call(
            "/v1/chat/completions",
            {**CHAT, "stream": True, "x_chunks": 3, "stream_options": {"include_usage": True}},
            headers=bearer(key),
        )
        usage = [e["usage"] for e in asked.events() if isinstance(e, dict) and "usage" in e]
        assert usage == [{"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}]
        accounts: Accounts = h.app.state.accounts
        await accounts.ledger.flush()
        rows = await accounts.store.usage(UsageQuery())
        assert [(r["prompt_tokens"], r["completion_tokens"], r["cost"]) for r in rows] == [
            (5, 3, 8),
            (5, 3, 8),
        ]
        me = await h.call("/api/me", method="GET", headers=bearer(key))
        assert me.json()["key"]["balance"] == 1000 - 16


async def test_accounts_rate_limit_headers_and_429(make_harness: Callable) -> None:
    async with make_harness(auth_mode="keys") as h:
        key = await make_key(h, rpm=2, tpm=10_000)
        first = await h.call("/v1/chat/completions", CHAT, headers=bearer(key))
        assert first.status == 200
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert first.headers["x-ratelimit-limit-tokens"] == "10000"
        assert int(first.headers["x-ratelimit-remaining-tokens"]) < 10_000
        assert first.headers["x-ratelimit-reset-requests"].endswith("s")
        await h.call("/v1/chat/completions", CHAT, headers=bearer(key))
        third = await h.call("/v1/chat/completions", CHAT, headers=bearer(key))
        assert third.status == 429
        assert third.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(third.headers["retry-after"]) <= 60
        assert third.headers["x-ratelimit-remaining-requests"] == "0"


async def test_accounts_usage_api_filters_groups_and_exports(make_harness: Callable) -> None:
    async with make_harness(auth_mode="keys") as h:
        admin = await make_key(h, Role.ADMIN, name="root")
        await h.call("/api/users", {"name": "ann", "password": "annannann"}, headers=bearer(admin))
        ann = (
            await h.call("/api/keys", {"name": "ann-key", "user": "ann"}, headers=bearer(admin))
        ).json()["key"]
        bob = await make_key(h, name="bob-key")
        for key in (ann, ann, bob):
            assert (await h.call("/v1/chat/completions", CHAT, headers=bearer(key))).status == 200
        by_key = await usage_rows(h, admin, by="key")
        assert [(r["key"], r["requests"], r["cost"]) for r in by_key] == [
            ("ann-key", 2, 24),
            ("bob-key", 1, 12),
        ]
        own = await h.call("/api/usage", method="GET", headers=bearer(ann))
        assert {r["username"] for r in own.json()["rows"]} == {"ann"}
        theirs = await h.call("/api/usage?user=bob", method="GET", headers=bearer(bob))
        assert {r["key_name"] for r in theirs.json()["rows"]} == {"bob-key"}  # own, not asked
        exported = await h.call(
            "/api/usage?format=csv&by=model", method="GET", headers=bearer(admin)
        )
        assert exported.headers["content-type"].startswith("text/csv")
        table = list(csv.DictReader(io.StringIO(exported.body.decode())))
        assert table == [
            {
                "model": "canned",
                "requests": "3",
                "prompt_tokens": "15",
                "completion_tokens": "21",
                "cost": "36",
                "errors": "0",
            }
        ]
        bad = await h.call("/api/usage?by=color", method="GET", headers=bearer(admin))
        assert bad.status == 400


async def test_accounts_fair_share_end_to_end(make_harness: Callable, tmp_path: Path) -> None:
    """Key A fills the queue of a one-slot model; key B's one request goes next."""
    spec = canned_spec(tmp_path, parallel=1, max_queue=50)
    async with make_harness(spec, auth_mode="keys") as h:
        a, b = await make_key(h, name="a"), await make_key(h, name="b")
        slow = {**CHAT, "x_headers_after_ms": 60}
        order: list[str] = []

        def send(key: str, label: str) -> asyncio.Future[None]:
            done = h.exchange("/v1/chat/completions", slow, headers=bearer(key)).done
            done.add_done_callback(lambda _: order.append(label))
            return done

        first = send(a, "a-first")
        await until(lambda: h.ps()["in_flight"] == 1)  # loaded, serving A's first
        backlog = [send(a, f"a{n}") for n in range(10)]
        await until(lambda: h.ps()["queued"] == 10)
        late = send(b, "b")
        await asyncio.gather(first, late, *backlog)
        # Served right after the one running when it came (and at most one of A's that was
        # granted in the same instant), not after A's ten.
        assert order.index("b") <= 2, order


async def test_accounts_without_the_ledger_still_give_back_reservations(
    make_harness: Callable,
) -> None:
    async with make_harness(auth_mode="keys", usage_ledger=False) as h:
        key = await make_key(h, balance=1000)
        assert (await h.call("/v1/chat/completions", CHAT, headers=bearer(key))).status == 200
        accounts: Accounts = h.app.state.accounts
        await accounts.ledger.flush()
        assert await accounts.store.usage(UsageQuery()) == []  # no rows kept
        me = await h.call("/api/me", method="GET", headers=bearer(key))
        assert me.json()["key"]["balance"] == 1000 - 12  # only what it used
