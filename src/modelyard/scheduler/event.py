"""What happened to a model, past tense, for logs, metrics and the web page."""

from __future__ import annotations

from dataclasses import dataclass

from modelyard.scheduler.state import ModelState


@dataclass(frozen=True)
class Event:
    model: str
    at: float


@dataclass(frozen=True)
class StateChanged(Event):
    old: ModelState
    new: ModelState
    reason: str = ""


@dataclass(frozen=True)
class LeaseAcquired(Event):
    queued: float
    """Seconds the request waited for the lease."""


@dataclass(frozen=True)
class LeaseReleased(Event):
    pass


@dataclass(frozen=True)
class KeepAliveExpired(Event):
    pass


@dataclass(frozen=True)
class Evicted(Event):
    for_model: str


@dataclass(frozen=True)
class RunnerExited(Event):
    code: int
    log_tail: str


@dataclass(frozen=True)
class MemoryPressure(Event):
    """The resident models together use more than the budget (``model`` is empty)."""

    used: dict[str, int]
    evicting: tuple[str, ...]
