"""What happened to a model, past tense, with its reason and numbers: for the event log
(``journal.py``), metrics, error messages and the web page.

Every event can say itself in one line (``describe``); ``DECISIONS`` are the ones the event
log keeps (a lease taken or returned is one per request: metrics count those instead).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from modelyard.quantity import format_size
from modelyard.scheduler.state import ModelState

EvictionReason = Literal["idle", "memory", "max_loaded", "manual", "reload", "crash", "node_lost"]
RefusalReason = Literal["queue_full", "queue_timeout", "too_big", "backing_off", "load_failed"]


def _sizes(sizes: dict[str, int]) -> str:
    return ", ".join(f"{format_size(n)} {device}" for device, n in sizes.items()) or "nothing"


def exit_name(code: int) -> str:
    """``code 1`` or ``signal SIGKILL`` (a negative code is the signal that ended it)."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


@dataclass(frozen=True)
class Event:
    model: str
    at: float
    """The scheduler's clock (monotonic seconds)."""
    replica: int | None = field(default=None, kw_only=True)
    """Which of the model's runners it is about, for a model that may run several."""
    node: str | None = field(default=None, kw_only=True)
    """The node it happened on: where the runner runs, or the one short of room (its sizes
    are of that node's devices); ``None`` where no one node is concerned."""

    def describe(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class StateChanged(Event):
    old: ModelState
    new: ModelState
    reason: str = ""

    def describe(self) -> str:
        return f"{self.old} → {self.new}" + (f" ({self.reason})" if self.reason else "")


@dataclass(frozen=True)
class LoadRequested(Event):
    request: str
    """What asked for it: a request id, ``load`` (the admin API) or ``preload``."""
    estimate: dict[str, int]

    def describe(self) -> str:
        return f"load requested by {self.request} (estimate {_sizes(self.estimate)})"


@dataclass(frozen=True)
class LoadFinished(Event):
    seconds: float
    measured: dict[str, int]

    def describe(self) -> str:
        return f"ready after {self.seconds:.2f}s, using {_sizes(self.measured)}"


@dataclass(frozen=True)
class LoadFailed(Event):
    seconds: float
    error: str
    retry_in: float

    def describe(self) -> str:
        retry = f"; loads refused for {self.retry_in:.0f}s" if self.retry_in > 0 else ""
        return f"load failed after {self.seconds:.2f}s: {self.error[:300]}{retry}"


@dataclass(frozen=True)
class KeepAliveExpired(Event):
    pass


@dataclass(frozen=True)
class Evicted(Event):
    """The model is being unloaded: ``reason`` says which kind of decision it was."""

    reason: EvictionReason = "manual"
    detail: str = ""
    for_model: str = ""
    """The model it made room for (``memory``), if one."""
    freed: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        target = f" to make room for {self.for_model}" if self.for_model else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"evicted ({self.reason}){target}{detail}, freeing {_sizes(self.freed)}"


@dataclass(frozen=True)
class Refused(Event):
    """A request was refused; ``needed``/``budget``/``in_use`` where memory decided it."""

    reason: RefusalReason
    error: str
    """The error message the request got."""
    needed: dict[str, int] = field(default_factory=dict)
    budget: dict[str, int] = field(default_factory=dict)
    in_use: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        return f"refused ({self.reason}): {self.error}"


@dataclass(frozen=True)
class RunnerExited(Event):
    code: int
    log_tail: str
    expected: bool = False

    def describe(self) -> str:
        lines = self.log_tail.strip().splitlines()[-3:]
        tail = (": " + " | ".join(lines)) if lines else ""
        how = "" if self.expected else " unexpectedly"
        return f"runner exited{how} with {exit_name(self.code)}{tail}"


@dataclass(frozen=True)
class Restarting(Event):
    delay: float
    crashes: int

    def describe(self) -> str:
        return f"restarting in {self.delay:.0f}s (crash {self.crashes} without a request served)"


@dataclass(frozen=True)
class MemoryPressure(Event):
    """The resident models together use more than the budget (``model`` is empty)."""

    used: dict[str, int]
    evicting: tuple[str, ...]
    budget: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        victims = ", ".join(self.evicting) or "nothing (every model is busy or pinned)"
        return (
            f"memory pressure: {_sizes(self.used)} in use, budget {_sizes(self.budget)}; "
            f"evicting {victims}"
        )


@dataclass(frozen=True)
class CatalogReloaded(Event):
    """``model`` is empty."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]

    def describe(self) -> str:
        parts = [
            f"{word} {', '.join(names)}"
            for word, names in (
                ("added", self.added),
                ("removed", self.removed),
                ("changed", self.changed),
            )
            if names
        ]
        return "catalog reloaded: " + ("; ".join(parts) or "no model changed")


@dataclass(frozen=True)
class NodeJoined(Event):
    """A cluster's node (``node``) takes runners from now on; ``model`` is empty."""

    budget: dict[str, int]

    def describe(self) -> str:
        return f"node {self.node} joined with {_sizes(self.budget)}"


@dataclass(frozen=True)
class NodeLost(Event):
    """A cluster's node (``node``) is gone: its runners with it; ``model`` is empty."""

    reason: str
    models: tuple[str, ...] = ()
    """The models that had runners there."""

    def describe(self) -> str:
        lost = f"; its runners of {', '.join(self.models)} are gone" if self.models else ""
        return f"node {self.node} lost ({self.reason}){lost}"


@dataclass(frozen=True)
class _KvMoved(Event):
    states: int
    tokens: int
    bytes: int
    seconds: float

    verb: ClassVar[str] = ""

    def describe(self) -> str:
        return (
            f"{self.verb} {self.states} conversation(s), {self.tokens} tokens "
            f"({format_size(self.bytes)}) in {self.seconds * 1000:.0f} ms"
        )


@dataclass(frozen=True)
class KvSaved(_KvMoved):
    """Its runner's conversations (slots' KV states) were saved before it stopped."""

    verb: ClassVar[str] = "saved"


@dataclass(frozen=True)
class KvRestored(_KvMoved):
    """Saved conversations were put back into its runner's slots before it took requests."""

    verb: ClassVar[str] = "restored"


@dataclass(frozen=True)
class KvMissed(Event):
    """It loaded with no saved conversation to restore (metrics count it; not logged)."""


@dataclass(frozen=True)
class KvDiscarded(Event):
    """Saved conversations were deleted: broken, or over ``kv_cache_disk``."""

    states: int
    bytes: int
    reason: str

    def describe(self) -> str:
        size = format_size(self.bytes)
        return f"deleted {self.states} saved conversation(s) ({size}): {self.reason}"


@dataclass(frozen=True)
class KvNoReuse(Event):
    """A restore spared no prompt reading on this model: its conversations are not saved."""

    detail: str

    def describe(self) -> str:
        return f"warm swaps off: {self.detail}"


DECISIONS: tuple[type[Event], ...] = (
    StateChanged,
    LoadRequested,
    LoadFinished,
    LoadFailed,
    Evicted,
    Refused,
    RunnerExited,
    Restarting,
    MemoryPressure,
    CatalogReloaded,
    NodeJoined,
    NodeLost,
    KvSaved,
    KvRestored,
    KvDiscarded,
    KvNoReuse,
)
