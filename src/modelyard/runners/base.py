"""The runner seam: everything the scheduler needs from an engine, and nothing more."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from modelyard.catalog.spec import Footprint, ModelSpec


class RunningModel(Protocol):
    """A started model: an OpenAI-compatible server at ``base_url``."""

    @property
    def base_url(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Sent with every request to it: the key only the gateway knows."""
        ...

    def footprint(self) -> Footprint:
        """Memory in use now, per device (measured, not estimated)."""
        ...

    async def wait(self) -> int:
        """Returns the exit code once the server has exited, for whatever reason."""
        ...

    async def stop(self, grace: float) -> None:
        """Asks the server to exit, forces it after ``grace`` seconds; returns once it has."""
        ...

    def log_tail(self, max_bytes: int = 2000) -> str:
        """The last lines this server wrote, to explain a failure."""
        ...


@runtime_checkable
class Sleeper(Protocol):
    """A running model that can give back its GPU memory without exiting (vLLM's sleep
    mode) and take it again."""

    async def sleep(self, level: int) -> None:
        """Returns once the server sleeps (``level`` 1: weights kept in RAM; 2: dropped)."""
        ...

    async def wake(self) -> None:
        """Returns once the server serves again."""
        ...


@dataclass(frozen=True)
class KvNews:
    """What a runner's warm swaps did: states ``saved`` at its stop, ``restored`` at its
    start (or ``missed``: none to restore), ``discarded`` (broken, or over the disk budget),
    or ``no_reuse``: its restores spare no prompt reading, so it saves no more."""

    kind: Literal["saved", "restored", "missed", "discarded", "no_reuse"]
    states: int = 0
    tokens: int = 0
    bytes: int = 0
    seconds: float = 0.0
    detail: str = ""


class Warm(Protocol):
    """A running model's conversations kept across its unload (llama.cpp's saved slots)."""

    tell: Callable[[KvNews], None]
    """Where what it did is told (its replica sets it)."""

    async def restore(self) -> None:
        """Before it takes requests: puts back what was saved (bounded in time)."""
        ...

    async def save(self) -> None:
        """Before it is stopped (never after a crash): saves what is worth it (bounded)."""
        ...


def warm_of(running: RunningModel) -> Warm | None:
    """The running model's ``warm`` attribute, if it keeps conversations across unloads."""
    warm: Warm | None = getattr(running, "warm", None)
    return warm


class Runner(Protocol):
    """Starts models of one engine. A runner whose ``estimate`` reads the model's files
    says so with a class attribute ``reads_files = True``: its estimates are then read in a
    thread, never on the event loop (a GGUF header takes 300 to 450 ms)."""

    def estimate(self, spec: ModelSpec) -> Footprint:
        """Memory the model will take once loaded, per device, before starting it."""
        ...

    async def start(self, spec: ModelSpec) -> RunningModel:
        """Starts the model's server and returns once it answers requests.

        Raises ``LoadFailedError`` (with the tail of the server's log) when it cannot.
        """
        ...
