"""A bounded history with live followers; a follower that stops reading is dropped."""

from __future__ import annotations

import asyncio

from modelyard.feed import Feed


def test_feed_keeps_the_newest_items() -> None:
    feed: Feed[int] = Feed(size=3)
    for i in range(10):
        feed.append(i)
    assert feed.items() == [7, 8, 9]


async def test_feed_followers_get_new_items_in_order() -> None:
    feed: Feed[int] = Feed(size=3)
    feed.append(0)
    with feed.follow() as follower:
        for i in range(1, 6):
            feed.append(i)
        assert [await follower.get() for _ in range(5)] == [1, 2, 3, 4, 5]
    assert feed.followers == 0


async def test_feed_waiting_follower_wakes_on_append() -> None:
    feed: Feed[str] = Feed(size=3)
    with feed.follow() as follower:
        waiting = asyncio.create_task(follower.get())
        await asyncio.sleep(0)
        assert not waiting.done()
        feed.append("new")
        assert await asyncio.wait_for(waiting, 1) == "new"


async def test_feed_drops_a_follower_that_falls_behind() -> None:
    feed: Feed[int] = Feed(size=10, buffer=5)
    with feed.follow() as slow:
        for i in range(10_000):
            feed.append(i)
        assert slow.lagged
        assert feed.followers == 0  # no longer fed: its buffer cannot grow
        got = []
        while (item := await slow.get()) is not None:
            got.append(item)
        assert got == [0, 1, 2, 3, 4]  # what it had, then the end
    assert feed.items() == list(range(9990, 10_000))
