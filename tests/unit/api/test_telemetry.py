"""A finished request's books (ledger row, metrics, activity, access log) are kept in
batches, and whatever reads them first books what is waiting."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest

from modelyard import logbook
from modelyard.accounts.ledger import LedgerWriter
from modelyard.accounts.store import UsageRow
from modelyard.api import telemetry as telemetry_module
from modelyard.api.telemetry import BATCH_DELAY, Telemetry, Trace


class _Store:
    def __init__(self) -> None:
        self.rows: list[UsageRow] = []

    async def write(self, rows: list[UsageRow], returns: Any = None) -> None:
        self.rows.extend(rows)


class _Accounts:
    """What ``Telemetry`` uses of ``Accounts``: its ledger, and ``finish`` for each request."""

    def __init__(self) -> None:
        self.store = _Store()
        self.ledger = LedgerWriter(self.store)  # type: ignore[arg-type]
        self.finished: list[str] = []

    def finish(self, principal: Any, charge: Any, usage: Any) -> None:
        self.finished.append(usage.request_id)
        self.ledger.append(usage.request_id)  # type: ignore[arg-type]


def _trace(request_id: str) -> Trace:
    return Trace(request_id, "POST", "/v1/chat/completions", time.perf_counter(), time.time(),
                 model="m", status=200, total=0.25)  # fmt: skip


async def test_books_are_kept_in_a_batch_and_before_anything_reads_them() -> None:
    accounts = _Accounts()
    books = Telemetry(
        None,  # type: ignore[arg-type]  # no metrics: no scheduler to follow
        metrics=False,
        access_log=False,
        activity_kept=100,
        accounts=accounts,  # type: ignore[arg-type]
    )
    books.finish(_trace("a"))
    books.finish(_trace("b"))
    assert accounts.finished == []  # not at once: the batch waits for the requests after
    await asyncio.sleep(BATCH_DELAY * 3)
    assert accounts.finished == ["a", "b"]  # both in the batch

    books.finish(_trace("c"))
    assert [t.request_id for t in books.activity.items()] == ["a", "b", "c"]  # read: booked
    books.finish(_trace("d"))
    await accounts.ledger.flush()  # a flush of the ledger has every row, "d" too
    assert accounts.store.rows == ["a", "b", "c", "d"]
    await asyncio.sleep(BATCH_DELAY * 3)
    assert accounts.finished == ["a", "b", "c", "d"]  # booked once each


async def test_a_charge_left_unsettled_is_booked_at_once() -> None:
    """Settling it frees its rate-limit place: that must not wait for the batch."""
    from modelyard.accounts.service import Charge

    accounts = _Accounts()
    books = Telemetry(None, metrics=False, access_log=False, activity_kept=100,  # type: ignore[arg-type]
                      accounts=accounts)  # type: ignore[arg-type]  # fmt: skip
    books.finish(_trace("settled"))
    unsettled = _trace("unsettled")
    unsettled.charge = Charge(None, None)  # type: ignore[arg-type]
    books.finish(unsettled)
    assert accounts.finished == ["settled", "unsettled"]  # in order, at once


async def test_a_request_whose_books_fail_leaves_the_others_booked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    accounts = _Accounts()
    books = Telemetry(None, metrics=False, access_log=False, activity_kept=100,  # type: ignore[arg-type]
                      accounts=accounts)  # type: ignore[arg-type]  # fmt: skip
    finish = accounts.finish

    def failing(principal: Any, charge: Any, usage: Any) -> None:
        if usage.request_id == "bad":
            raise RuntimeError("boom")
        finish(principal, charge, usage)

    monkeypatch.setattr(accounts, "finish", failing)
    for rid in ("a", "bad", "c"):
        books.finish(_trace(rid))
    books.flush()
    assert accounts.finished == ["a", "c"]


async def test_access_log_lines_bear_their_own_request_and_time(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    monkeypatch.setattr(logbook, "_sink", None)
    try:
        logbook.setup("info", "json", tmp_path, logbook.DEFAULT_ROTATION)
        books = Telemetry(None, metrics=False, access_log=True, activity_kept=10)  # type: ignore[arg-type]
        first, second = _trace("first"), _trace("second")
        second.wall -= 3600  # ended an hour before the first
        logbook.request_id.set("another-request")  # the context the batch would run in
        books.finish(first)
        books.finish(second)
        await asyncio.sleep(BATCH_DELAY * 3)
        assert logbook._sink is not None
        logbook._sink.flush()
        lines = [json.loads(line) for line in (tmp_path / "gateway.log").read_text().splitlines()]
        access = [line for line in lines if line["logger"] == telemetry_module.access_log.name]
        assert [line["request_id"] for line in access] == ["first", "second"]
        stamps = [time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t.wall + t.total))
                  for t in (first, second)]  # fmt: skip
        assert [line["time"][:19] for line in access] == stamps
        logbook._sink.close()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
