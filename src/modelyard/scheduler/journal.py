"""The event log: every scheduler decision (``event.DECISIONS``) with an id, the wall-clock
time and its numbers, in a bounded ring that can be followed live.

Ids grow by one from 1 for the life of the server; error messages name the id of the
decision that refused them, so an operator can find it in ``modelyard events``.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modelyard.feed import Feed
from modelyard.scheduler.event import DECISIONS, Event

log = logging.getLogger(__name__)


def kind_of(event: Event) -> str:
    """``LoadFinished`` → ``load_finished``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(event).__name__).lower()


@dataclass(frozen=True)
class Entry:
    id: int
    time: float
    """Wall-clock seconds (``time.time()``)."""
    event: Event

    def to_dict(self) -> dict[str, Any]:
        fields = {
            f.name: _plain(getattr(self.event, f.name))
            for f in dataclasses.fields(self.event)
            if f.name not in ("model", "at")
        }
        return {
            **fields,
            "id": self.id,
            "time": self.time,
            "type": kind_of(self.event),
            "model": self.event.model or None,
            "message": (f"replica {self.event.replica}: " if self.event.replica is not None else "")
            + self.event.describe(),
        }


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


class Journal:
    def __init__(self, size: int = 1000) -> None:
        self.feed: Feed[Entry] = Feed(size)
        self._next = 1

    def record(self, event: Event) -> int:
        entry = Entry(self._next, time.time(), event)
        self._next += 1
        self.feed.append(entry)
        return entry.id

    def entries(
        self, *, since: float | None = None, after: int | None = None, model: str | None = None
    ) -> list[Entry]:
        """Kept entries, oldest first: from wall time ``since``, after id ``after``, of
        ``model`` (events about no model in particular are kept in)."""
        return [e for e in self.feed.items() if matches(e, since=since, after=after, model=model)]


def matches(
    entry: Entry, *, since: float | None = None, after: int | None = None, model: str | None = None
) -> bool:
    if since is not None and entry.time < since:
        return False
    if after is not None and entry.id <= after:
        return False
    return model is None or entry.event.model in (model, "")


class Bus:
    """Where the scheduler's events go: to every listener, and decisions into the journal."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._listeners: list[Callable[[Event], None]] = []

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        self._listeners.append(listener)

    def emit(self, event: Event) -> int:
        """Tells the listeners (one that fails is logged and skipped); a decision also goes
        into the journal: its id is returned, else 0."""
        entry = self.journal.record(event) if isinstance(event, DECISIONS) else 0
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed on %r", event)
        return entry
