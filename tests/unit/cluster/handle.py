"""A keeper reached as Ray reaches an actor, without Ray: ``handle.start.remote(spec)``
gives something to await; ``broken`` makes every call fail, as a node that is gone."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from modelyard.cluster.keeper import Keeper


class _Call:
    def __init__(self, method: Callable[..., Awaitable[Any]]) -> None:
        self._method = method

    def remote(self, *args: Any) -> Awaitable[Any]:
        return self._method(*args)


class Handle:
    """A keeper as an actor handle: ``handle.start.remote(spec)``."""

    def __init__(self, keeper: Keeper) -> None:
        self.keeper = keeper
        self.broken = False

    def __getattr__(self, name: str) -> _Call:
        if self.broken:
            return _Call(_gone)
        return _Call(getattr(self.keeper, name))


async def _gone(*_: Any) -> Any:
    raise ConnectionError("the actor is gone")
