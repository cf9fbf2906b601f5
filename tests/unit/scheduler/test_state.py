"""The state table as behaviour: every legal edge is one the scheduler takes (and reports),
every other edge raises."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from modelyard.catalog.catalog import Catalog
from modelyard.catalog.spec import ModelSpec
from modelyard.errors import LoadFailedError
from modelyard.scheduler import Scheduler
from modelyard.scheduler.event import Event, StateChanged
from modelyard.scheduler.state import (
    TRANSITIONS,
    IllegalTransitionError,
    ModelState,
    check_transition,
)
from tests.fake import FakeRunner, ManualClock, settle

S = ModelState


async def test_state_every_legal_edge_is_taken_and_emits_its_event() -> None:
    runner = FakeRunner()
    clock = ManualClock()
    spec = ModelSpec(name="m", path=Path("/models/m.gguf"))
    sleeper = ModelSpec(name="s", path=Path("/models/s.gguf"), sleep_level=1, keep_alive=1.0)
    scheduler = Scheduler(
        Catalog([spec, sleeper]), {"llamacpp": runner}, {"ram": 1000}, clock=clock
    )
    events: list[Event] = []
    scheduler.subscribe(events.append)

    await scheduler.load("m")  # stopped -> loading -> ready
    await scheduler.unload("m")  # ready -> unloading -> stopped
    runner.fail["m"] = "broken file"
    with pytest.raises(LoadFailedError):
        await scheduler.load("m")  # stopped -> loading -> failed
    with pytest.raises(LoadFailedError):
        await scheduler.load("m")  # failed -> loading -> failed
    await scheduler.unload("m")  # failed -> stopped
    del runner.fail["m"]
    clock.advance(60)
    lease = await scheduler.acquire("m")
    runner.running["m"].crash()  # ready -> stopped
    await settle()
    scheduler.release(lease)

    await scheduler.load("s")
    clock.advance(2)  # ready -> sleeping (its keep-alive ran out)
    await settle()
    await scheduler.load("s")  # sleeping -> loading -> ready (woken)
    clock.advance(2)
    await settle()
    await scheduler.unload("s")  # sleeping -> unloading -> stopped
    await scheduler.load("s")
    clock.advance(2)
    await settle()
    runner.running["s"].crash()  # sleeping -> stopped
    await settle()

    taken = {(e.old, e.new) for e in events if isinstance(e, StateChanged)}
    legal = {(old, new) for old, targets in TRANSITIONS.items() for new in targets}
    assert taken == legal
    for old, new in taken:
        check_transition(old, new)  # what was taken is what the table allows


@pytest.mark.parametrize(
    ("old", "new"),
    [(a, b) for a, b in itertools.product(S, S) if b not in TRANSITIONS[a]],
)
def test_state_every_other_edge_raises(old: ModelState, new: ModelState) -> None:
    with pytest.raises(IllegalTransitionError, match=f"{old} -> {new}"):
        check_transition(old, new)


def test_state_values_are_the_wire_names() -> None:
    assert [s.value for s in S] == [
        "stopped",
        "loading",
        "ready",
        "unloading",
        "failed",
        "sleeping",
    ]
