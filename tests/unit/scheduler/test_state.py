import itertools

import pytest

from modelyard.scheduler.state import (
    TRANSITIONS,
    IllegalTransitionError,
    ModelState,
    check_transition,
)

S = ModelState
LEGAL = {
    (S.STOPPED, S.LOADING),
    (S.LOADING, S.READY),
    (S.LOADING, S.FAILED),
    (S.READY, S.UNLOADING),
    (S.READY, S.STOPPED),
    (S.UNLOADING, S.STOPPED),
    (S.FAILED, S.LOADING),
    (S.FAILED, S.STOPPED),
}


@pytest.mark.parametrize(("old", "new"), sorted(LEGAL))
def test_state_legal_transitions_pass(old: ModelState, new: ModelState) -> None:
    check_transition(old, new)


@pytest.mark.parametrize(("old", "new"), sorted(set(itertools.product(S, S)) - LEGAL))
def test_state_illegal_transitions_raise(old: ModelState, new: ModelState) -> None:
    with pytest.raises(IllegalTransitionError, match=f"{old} -> {new}"):
        check_transition(old, new)


def test_state_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(S)
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == LEGAL


def test_state_values_are_the_wire_names() -> None:
    assert [s.value for s in S] == ["stopped", "loading", "ready", "unloading", "failed"]
