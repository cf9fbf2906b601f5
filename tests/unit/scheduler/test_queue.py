"""Fair share in a model's queue: clients take turns (weighted), FIFO within a client."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelyard.catalog.catalog import Catalog
from modelyard.catalog.spec import ModelSpec
from modelyard.scheduler import Scheduler
from modelyard.scheduler.queue import FairQueue
from tests.fake import FakeRunner, ManualClock, settle


@dataclass(eq=False)
class Item:
    seq: int
    client: str
    weight: float = 1.0


def drain(queue: FairQueue[Item]) -> list[str]:
    out = []
    while queue:
        item = queue.popleft()
        out.append(f"{item.client}{item.seq}")
    return out


def test_queue_is_fifo_for_one_client() -> None:
    queue: FairQueue[Item] = FairQueue()
    for n in range(5):
        queue.append(Item(n, "a"))
    assert len(queue) == 5
    assert queue.oldest().seq == 0
    assert drain(queue) == ["a0", "a1", "a2", "a3", "a4"]
    with pytest.raises(IndexError):
        queue.popleft()


def test_queue_takes_turns_between_clients() -> None:
    queue: FairQueue[Item] = FairQueue()
    for n in range(4):
        queue.append(Item(n, "a"))
    queue.append(Item(10, "b"))
    queue.append(Item(11, "b"))
    assert drain(queue) == ["a0", "b10", "a1", "b11", "a2", "a3"]


def test_queue_newcomer_goes_next_not_behind_the_backlog() -> None:
    queue: FairQueue[Item] = FairQueue()
    for n in range(40):
        queue.append(Item(n, "a"))
    served = [queue.popleft().seq for _ in range(5)]
    assert served == [0, 1, 2, 3, 4]
    queue.append(Item(100, "b"))
    assert queue.popleft().client == "b"


def test_queue_weights_share_in_proportion() -> None:
    queue: FairQueue[Item] = FairQueue()
    for n in range(30):
        queue.append(Item(n, "a", weight=2.0))
        queue.append(Item(100 + n, "b", weight=1.0))
    first = [queue.popleft().client for _ in range(30)]
    assert first.count("a") == 20
    assert first.count("b") == 10


def test_queue_remove_and_iterate_oldest_first() -> None:
    queue: FairQueue[Item] = FairQueue()
    items = [Item(n, "ab"[n % 2]) for n in range(6)]
    for item in items:
        queue.append(item)
    queue.remove(items[2])
    assert [i.seq for i in queue] == [0, 1, 3, 4, 5]
    with pytest.raises(ValueError, match="not queued"):
        queue.remove(Item(9, "c"))
    for item in (items[1], items[3], items[5]):
        queue.remove(item)
    assert drain(queue) == ["a0", "a4"]
    assert not queue


async def test_scheduler_serves_a_second_key_within_parallel_grants() -> None:
    """Key A queues 40 requests for one model, then key B sends one: B is served within the
    next ``parallel`` grants."""
    spec = ModelSpec(name="m", path=Path("/m.gguf"), parallel=2, max_queue=100)
    scheduler = Scheduler(Catalog([spec]), {"llamacpp": FakeRunner()}, {"ram": 1000},
                          clock=ManualClock())  # fmt: skip
    order: list[str] = []

    async def request(client: str, n: int) -> None:
        lease = await scheduler.acquire("m", client=client)
        order.append(f"{client}{n}")
        await hold.wait()
        scheduler.release(lease)

    hold = asyncio.Event()
    a = [asyncio.create_task(request("A", n)) for n in range(40)]
    await settle()
    assert order == ["A0", "A1"]  # two slots; 38 of A wait
    b = asyncio.create_task(request("B", 0))
    await settle()
    hold.set()
    await asyncio.gather(*a, b)
    assert order.index("B0") < 2 + spec.parallel  # served among the next two grants
    assert [x for x in order if x.startswith("A")] == [f"A{n}" for n in range(40)]
