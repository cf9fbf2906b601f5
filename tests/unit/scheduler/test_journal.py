"""The event log: every decision of a scripted sequence, in order, with its numbers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from modelyard.errors import DoesNotFitError, LoadFailedError, QueueFullError
from modelyard.scheduler.journal import Journal
from tests.fake import leased, settle
from tests.unit.scheduler.test_scheduler import make, spec


def log(entries: list[Any]) -> list[tuple[str, str | None]]:
    return [(e["type"], e["model"]) for e in entries]


def journal_of(scheduler: Any, **kw: Any) -> list[dict[str, Any]]:
    return [e.to_dict() for e in scheduler.journal.entries(**kw)]


async def test_journal_tells_a_scripted_sequence_in_order_with_its_numbers() -> None:
    scheduler, runner, clock, _ = make(
        spec("a", max_queue=0, parallel=1), spec("b"), budget=150, sizes={"a": 100, "b": 100}
    )
    runner.gate = asyncio.Event()
    first = asyncio.create_task(scheduler.acquire("a", request="req-1"))
    await settle()
    clock.advance(2.5)
    runner.gate.set()
    lease = await first
    assert (lease.queued, lease.load_wait) == (2.5, 2.5)
    # The only slot is taken and nothing may wait: refused, and the error names its event.
    with pytest.raises(QueueFullError) as full:
        await scheduler.acquire("a", request="req-2")
    scheduler.release(lease)
    async with leased(scheduler, "b", request="req-3"):  # evicts a to make room
        pass
    runner.running["b"].crash(-9)
    await settle()

    entries = journal_of(scheduler)
    assert log(entries) == [
        ("load_requested", "a"),
        ("state_changed", "a"),  # stopped → loading
        ("load_finished", "a"),
        ("state_changed", "a"),  # loading → ready
        ("refused", "a"),
        ("load_requested", "b"),  # by req-3
        ("evicted", "a"),  # to make room for b
        ("state_changed", "a"),  # ready → unloading
        ("runner_exited", "a"),  # expected: we stopped it
        ("state_changed", "a"),  # unloading → stopped
        ("state_changed", "b"),
        ("load_finished", "b"),
        ("state_changed", "b"),
        ("runner_exited", "b"),  # SIGKILL
        ("evicted", "b"),
        ("restarting", "b"),
        ("state_changed", "b"),  # ready → stopped
    ]
    by_id = {e["id"]: e for e in entries}
    assert [e["id"] for e in entries] == list(range(1, len(entries) + 1))
    requested, _, finished = entries[0], entries[1], entries[2]
    assert requested["request"] == "req-1"
    assert requested["estimate"] == {"ram": 100}
    assert finished["seconds"] == 2.5
    assert finished["measured"] == {"ram": 100}
    assert finished["message"] == "ready after 2.50s, using 100 B ram"
    refused = entries[4]
    assert refused["reason"] == "queue_full"
    assert full.value.event == refused["id"]
    assert f"(event {refused['id']})" in full.value.message
    assert by_id[refused["id"]]["message"].startswith("refused (queue_full): Too many requests")
    evicted = entries[6]
    assert (evicted["reason"], evicted["for_model"], evicted["freed"]) == (
        "memory",
        "b",
        {"ram": 100},
    )
    assert entries[5]["request"] == "req-3"
    assert (entries[8]["expected"], entries[13]["expected"]) == (True, False)
    assert entries[13]["code"] == -9
    assert "signal SIGKILL" in entries[13]["message"]
    assert (entries[14]["reason"], entries[14]["detail"]) == (
        "crash",
        "runner exited with signal SIGKILL",
    )
    assert entries[15]["delay"] == 0.0  # the first crash restarts at once
    assert [e["new"] for e in entries if e["type"] == "state_changed" and e["model"] == "b"] == [
        "loading",
        "ready",
        "stopped",
    ]


async def test_journal_records_refusals_for_memory_and_failed_loads() -> None:
    scheduler, runner, _, _ = make(spec("big"), spec("broken"), budget=100, sizes={"big": 500})
    with pytest.raises(DoesNotFitError) as too_big:
        await scheduler.acquire("big")
    runner.fail["broken"] = "no such file"
    with pytest.raises(LoadFailedError) as failed:
        await scheduler.acquire("broken")
    entries = journal_of(scheduler)
    refused = entries[0]
    assert (refused["type"], refused["reason"]) == ("refused", "too_big")
    assert (refused["needed"], refused["budget"], refused["in_use"]) == (
        {"ram": 500},
        {"ram": 100},
        {},
    )
    assert too_big.value.event == refused["id"]
    (load_failed,) = [e for e in entries if e["type"] == "load_failed"]
    assert "no such file" in load_failed["error"]
    assert failed.value.event == load_failed["id"]


async def test_journal_filters_by_model_time_and_id() -> None:
    scheduler, _, _, _ = make(spec("a"), spec("b"))
    async with leased(scheduler, "a"):
        pass
    async with leased(scheduler, "b"):
        pass
    assert {e["model"] for e in journal_of(scheduler, model="a")} == {"a"}
    last = journal_of(scheduler)[-1]
    assert journal_of(scheduler, after=last["id"]) == []
    assert journal_of(scheduler, since=last["time"] + 1) == []
    assert journal_of(scheduler, after=last["id"] - 1) == [last]


async def test_journal_keeps_only_the_newest_entries() -> None:
    journal = Journal(size=10)
    scheduler, _, _, _ = make(spec("a", keep_alive=0.0))
    scheduler.journal = journal
    for _ in range(10):
        async with leased(scheduler, "a"):
            pass
        await settle()
    ids = [e.id for e in journal.entries()]
    assert len(ids) == 10
    assert ids == list(range(ids[0], ids[0] + 10))
    assert ids[0] > 1  # the oldest were dropped


async def test_journal_catalog_reload_is_an_event() -> None:
    from modelyard.catalog.catalog import Catalog

    scheduler, _, _, _ = make(spec("a"), spec("b"))
    scheduler.update_catalog(Catalog([spec("a", ctx=8192), spec("c")]))
    (entry,) = journal_of(scheduler)
    assert entry["type"] == "catalog_reloaded"
    assert (entry["added"], entry["removed"], entry["changed"]) == (["c"], ["b"], ["a"])
    assert entry["message"] == "catalog reloaded: added c; removed b; changed a"
