"""Model states and the legal transitions between them: the one table."""

from __future__ import annotations

from enum import StrEnum


class ModelState(StrEnum):
    STOPPED = "stopped"
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"
    FAILED = "failed"
    SLEEPING = "sleeping"
    """The runner runs with its GPU memory given back (vLLM's sleep mode); a request wakes it."""


S = ModelState

TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    S.STOPPED: frozenset({S.LOADING}),
    S.LOADING: frozenset({S.READY, S.FAILED}),
    # READY -> STOPPED: the runner exited on its own (a crash); the next request restarts it.
    S.READY: frozenset({S.UNLOADING, S.STOPPED, S.SLEEPING}),
    S.UNLOADING: frozenset({S.STOPPED}),
    S.FAILED: frozenset({S.LOADING, S.STOPPED}),
    # SLEEPING -> LOADING: woken by a request; -> UNLOADING: stopped; -> STOPPED: a crash.
    S.SLEEPING: frozenset({S.LOADING, S.UNLOADING, S.STOPPED}),
}

# A model in these states holds (or is about to hold) memory.
RESIDENT = frozenset({S.LOADING, S.READY, S.UNLOADING, S.SLEEPING})


class IllegalTransitionError(RuntimeError):
    """A bug: some code tried a state change the table does not allow."""


def check_transition(old: ModelState, new: ModelState) -> None:
    if new not in TRANSITIONS[old]:
        raise IllegalTransitionError(f"illegal model state change {old} -> {new}")
