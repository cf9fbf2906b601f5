"""A model's waiting requests, served fairly between clients (API keys).

Requests of different clients take turns, weighted by each client's ``weight`` (a key's
``priority``), and are first in, first out within one client: a key that queued 40
requests does not make a key that sends one wait behind all of them.

It is stride scheduling: each waiting client has a ``pass``; the client with the lowest goes
next (the oldest request breaks ties) and its pass grows by ``1 / weight``. A client that
starts waiting joins at the pass of the last request served, so time spent idle is not
saved up as credit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class Queued(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def client(self) -> str: ...
    @property
    def weight(self) -> float: ...


T = TypeVar("T", bound=Queued)


class FairQueue(Generic[T]):
    def __init__(self) -> None:
        self._queues: dict[str, deque[T]] = {}
        self._pass: dict[str, float] = {}
        self._now = 0.0
        """The pass of the last request served: where a client that starts waiting joins."""
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[T]:
        """Every waiting request, oldest first."""
        items = [item for queue in self._queues.values() for item in queue]
        return iter(sorted(items, key=lambda item: item.seq))

    def append(self, item: T) -> None:
        queue = self._queues.get(item.client)
        if queue is None:
            queue = self._queues[item.client] = deque()
            self._pass[item.client] = self._now
        queue.append(item)
        self._len += 1

    def oldest(self) -> T:
        return min((queue[0] for queue in self._queues.values()), key=lambda item: item.seq)

    def popleft(self) -> T:
        """The next request to serve (``IndexError`` when none waits)."""
        if not self._queues:
            raise IndexError("pop from an empty queue")
        if len(self._queues) == 1:
            client = next(iter(self._queues))
        else:
            client = min(self._queues, key=lambda c: (self._pass[c], self._queues[c][0].seq))
        queue = self._queues[client]
        item = queue.popleft()
        self._len -= 1
        self._now = self._pass[client]
        self._pass[client] += 1.0 / item.weight
        if not queue:
            del self._queues[client]
            del self._pass[client]
        return item

    def remove(self, item: T) -> None:
        """Takes ``item`` out (``ValueError`` when it is not waiting)."""
        queue = self._queues.get(item.client)
        if queue is None:
            raise ValueError("not queued")
        queue.remove(item)
        self._len -= 1
        if not queue:
            del self._queues[item.client]
            del self._pass[item.client]
