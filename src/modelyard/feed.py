"""A bounded history with live followers: the event log and the activity list are feeds.

``append`` keeps the newest ``size`` items and hands each one to every follower. A follower
has a bounded buffer of its own: one that does not keep up (a client that stops reading an
SSE stream) is dropped with ``lagged`` set, rather than growing the server's memory.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")


class Follower(Generic[T]):
    def __init__(self, buffer: int) -> None:
        self._buffer = buffer
        self._queue: asyncio.Queue[T | None] = asyncio.Queue()
        self.lagged = False
        """Dropped for falling ``buffer`` items behind; ``get`` then returns ``None``."""

    def _offer(self, item: T) -> bool:
        if self._queue.qsize() >= self._buffer:
            self.lagged = True
            self._queue.put_nowait(None)  # what it has, then the end
            return False
        self._queue.put_nowait(item)
        return True

    async def get(self) -> T | None:
        """The next item; ``None`` once dropped (``lagged``)."""
        if self.lagged and self._queue.empty():
            return None
        return await self._queue.get()

    def drain(self) -> list[T | None]:
        """What has come and not been taken yet, without waiting."""
        items: list[T | None] = []
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items


class Feed(Generic[T]):
    def __init__(self, size: int, buffer: int = 1000) -> None:
        self._items: deque[T] = deque(maxlen=size)
        self._followers: list[Follower[T]] = []
        self._buffer = buffer

    def append(self, item: T) -> None:
        self._items.append(item)
        if self._followers:
            self._followers = [f for f in self._followers if f._offer(item)]

    def items(self) -> list[T]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    @contextmanager
    def follow(self) -> Iterator[Follower[T]]:
        """A follower that gets every item appended while the ``with`` block runs."""
        follower: Follower[T] = Follower(self._buffer)
        self._followers.append(follower)
        try:
            yield follower
        finally:
            if follower in self._followers:
                self._followers.remove(follower)

    @property
    def followers(self) -> int:
        return len(self._followers)
