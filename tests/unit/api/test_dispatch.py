"""The serving path owns its lease: released however the exchange ends."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.unit.api.conftest import Harness, canned_spec, until

CHAT = {"model": "canned", "messages": [{"role": "user", "content": "hi"}]}


def stream(**script: Any) -> dict[str, Any]:
    return {**CHAT, "stream": True, **script}


async def idle(h: Harness, within: float = 2.0) -> None:
    """Waits until the model holds no lease and nobody queues; fails after ``within``."""
    deadline = asyncio.get_running_loop().time() + within
    while h.ps() != {"in_flight": 0, "queued": 0}:
        assert asyncio.get_running_loop().time() < deadline, f"lease leaked: {h.ps()}"
        await asyncio.sleep(0.01)


async def test_dispatch_answer_and_stream_release_their_lease(make_harness: Callable) -> None:
    async with make_harness() as h:
        answer = await h.call("/v1/chat/completions", CHAT)
        assert answer.status == 200
        assert answer.json()["choices"][0]["message"]["content"]
        assert float(answer.headers["x-modelyard-queue-ms"]) > 0  # it waited for the load
        streamed = await h.call("/v1/chat/completions", stream(x_chunks=5, x_delay_ms=1))
        assert streamed.status == 200
        events = streamed.events()
        assert len(events) == 7  # five tokens, the final chunk (with timings), [DONE]
        assert events[-2]["timings"]["predicted_n"] == 5
        assert events[-1] == "[DONE]"
        await idle(h, within=0)


async def test_dispatch_client_gone_while_queued(make_harness: Callable, tmp_path: Path) -> None:
    async with make_harness(canned_spec(tmp_path, parallel=1)) as h:
        first = h.exchange("/v1/chat/completions", stream(x_chunks=100, x_delay_ms=20))
        await first.first_chunk.wait()
        queued = h.exchange("/v1/chat/completions", CHAT)
        await until(lambda: h.ps()["queued"] == 1)
        assert h.ps() == {"in_flight": 1, "queued": 1}
        queued.leave()
        await queued.done
        assert queued.status == 499
        assert h.ps() == {"in_flight": 1, "queued": 0}
        await first.done
        await idle(h)


async def test_dispatch_client_gone_while_loading(make_harness: Callable) -> None:
    async with make_harness() as h:
        h.runner.gate = asyncio.Event()
        waiting = h.exchange("/v1/chat/completions", CHAT)
        await until(lambda: h.ps()["queued"] == 1)
        assert h.scheduler.state("canned") == "loading"
        waiting.leave()
        await waiting.done
        h.runner.gate.set()
        deadline = asyncio.get_running_loop().time() + 10
        while h.scheduler.state("canned") != "ready":
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        await idle(h)


async def test_dispatch_client_gone_before_first_byte(make_harness: Callable) -> None:
    async with make_harness() as h:
        await h.call("/v1/chat/completions", CHAT)  # loaded
        slow = h.exchange("/v1/chat/completions", stream(x_headers_after_ms=2000))
        await until(lambda: h.ps() != {"in_flight": 0, "queued": 0})
        assert h.ps()["in_flight"] == 1
        slow.leave()
        await slow.done
        assert slow.status == 499
        await idle(h, within=0)


async def test_dispatch_client_gone_at_once_is_noticed(make_harness: Callable) -> None:
    """The client is watched only once a request has run a few milliseconds; one that has
    left before is noticed then, not when the answer comes."""
    async with make_harness() as h:
        await h.call("/v1/chat/completions", CHAT)  # loaded
        started = asyncio.get_running_loop().time()
        gone = h.exchange("/v1/chat/completions", stream(x_headers_after_ms=3000))
        gone.leave()
        await asyncio.wait_for(gone.done, 1)
        assert gone.status == 499
        assert asyncio.get_running_loop().time() - started < 1
        await idle(h, within=0)


async def test_dispatch_client_gone_mid_stream(make_harness: Callable) -> None:
    async with make_harness() as h:
        exchange = h.exchange("/v1/chat/completions", stream(x_chunks=200, x_delay_ms=10))
        await exchange.first_chunk.wait()
        exchange.leave()
        await asyncio.wait_for(exchange.done, 1)
        assert exchange.status == 200
        await idle(h, within=0)


async def test_dispatch_upstream_breaks_mid_stream_with_error_frame(
    make_harness: Callable,
) -> None:
    async with make_harness() as h:
        broken = await h.call("/v1/chat/completions", stream(x_chunks=10, x_abort_after=3))
        events = broken.events()
        assert len(events) == 5
        assert events[-2]["error"]["code"] == "runner_failed"
        assert events[-1] == "[DONE]"
        await idle(h, within=0)


async def test_dispatch_upstream_error_status_passes_through(make_harness: Callable) -> None:
    async with make_harness() as h:
        refused = await h.call("/v1/chat/completions", {**CHAT, "x_status": 400})
        assert refused.status == 400
        assert refused.json()["error"]["message"] == "scripted failure"
        failed = await h.call("/v1/chat/completions", stream(x_status=500))
        assert failed.status == 502  # the runner failed, not the gateway
        assert failed.json()["error"]["code"] == "runner_failed"
        assert "scripted failure" in failed.json()["error"]["message"]
        await idle(h, within=0)


async def test_dispatch_cancelled_stream_ends_with_error_frame(make_harness: Callable) -> None:
    async with make_harness() as h:
        exchange = h.exchange("/v1/chat/completions", stream(x_chunks=200, x_delay_ms=10))
        await exchange.first_chunk.wait()
        exchange.done.cancel()  # what uvicorn does once shutdown_timeout has passed
        await exchange.done  # ended for the client: no traceback in the server's log
        events = exchange.events()
        assert events[-2]["error"]["code"] == "shutting_down"
        assert events[-1] == "[DONE]"
        await idle(h, within=0)


async def test_dispatch_cancelled_while_queued_releases(
    make_harness: Callable, tmp_path: Path
) -> None:
    async with make_harness(canned_spec(tmp_path, parallel=1)) as h:
        first = h.exchange("/v1/chat/completions", stream(x_chunks=100, x_delay_ms=20))
        await first.first_chunk.wait()
        queued = h.exchange("/v1/chat/completions", CHAT)
        await until(lambda: h.ps()["queued"] == 1)
        queued.done.cancel()
        await queued.done
        assert queued.status == 503
        assert queued.json()["error"]["code"] == "shutting_down"
        assert h.ps() == {"in_flight": 1, "queued": 0}
        await first.done
        await idle(h)


async def test_dispatch_dead_runner_request_waits_for_restart(make_harness: Callable) -> None:
    async with make_harness() as h:
        assert (await h.call("/v1/chat/completions", CHAT)).status == 200
        (old,) = h.runner.started
        os.killpg(old.pid, signal.SIGKILL)
        # Sent before the gateway has noticed: each meets the dead runner first.
        answers = await asyncio.gather(*(h.call("/v1/chat/completions", CHAT) for _ in range(4)))
        assert [a.status for a in answers] == [200] * 4
        assert len(h.runner.started) == 2  # restarted once, for all of them
        await idle(h, within=0)


async def test_dispatch_in_flight_stream_fails_when_runner_dies(make_harness: Callable) -> None:
    async with make_harness() as h:
        exchange = h.exchange("/v1/chat/completions", stream(x_chunks=200, x_delay_ms=10))
        await exchange.first_chunk.wait()
        os.killpg(h.runner.started[0].pid, signal.SIGKILL)
        await asyncio.wait_for(exchange.done, 5)
        events = exchange.events()
        assert events[-2]["error"]["code"] == "runner_failed"
        after = await h.call("/v1/chat/completions", CHAT)
        assert after.status == 200
        await idle(h, within=0)


async def test_dispatch_whole_answer_is_asked_again_when_its_runner_dies(
    make_harness: Callable, monkeypatch: Any
) -> None:
    """A whole answer is gathered from the engine's stream; the client has seen nothing of
    it when the runner dies, so it waits for the restart and gets the answer, charged once.
    A live runner that drops the stream is a 502."""
    async with make_harness() as h:
        assert (await h.call("/v1/chat/completions", CHAT)).status == 200  # loaded
        asked = h.exchange("/v1/chat/completions", {**CHAT, "x_chunks": 200, "x_delay_ms": 10})
        await asyncio.sleep(0.3)  # mostly mid-answer (2 s long); before it, it waits all the same
        os.killpg(h.runner.started[0].pid, signal.SIGKILL)
        await asyncio.wait_for(asked.done, 30)
        assert asked.status == 200
        answer = asked.json()
        assert answer["usage"]["completion_tokens"] == 200  # the second answer's only
        assert answer["choices"][0]["message"]["content"].startswith("Hello from")
        assert len(h.runner.started) == 2
        original = h.scheduler.runner_unreachable

        async def quick(lease: Any, grace: float = 5.0) -> bool:
            return await original(lease, grace=0.05)

        monkeypatch.setattr(h.scheduler, "runner_unreachable", quick)
        dropped = await h.call("/v1/chat/completions", {**CHAT, "x_chunks": 9, "x_abort_after": 3})
        assert dropped.status == 502
        assert dropped.json()["error"]["code"] == "runner_failed"
        await idle(h, within=0)


async def test_dispatch_cold_model_admits_its_slots_and_queue(
    make_harness: Callable, tmp_path: Path
) -> None:
    async with make_harness(canned_spec(tmp_path, parallel=4, max_queue=4)) as h:
        h.runner.gate = asyncio.Event()
        exchanges = [h.exchange("/v1/chat/completions", CHAT) for _ in range(20)]
        await until(lambda: sum(e.done.done() for e in exchanges) == 12)  # the 429s
        h.runner.gate.set()
        await asyncio.gather(*(e.done for e in exchanges))
        statuses = sorted(e.status for e in exchanges)
        assert statuses == [200] * 8 + [429] * 12  # 4 slots + 4 queued, as when warm
        assert all("retry-after" in e.headers for e in exchanges if e.status == 429)
        await idle(h, within=0)


async def test_dispatch_tries_again_when_a_live_runner_drops_the_connection(
    make_harness: Callable, monkeypatch: Any
) -> None:
    """A runner that closes a connection before taking the request but keeps running: the
    request is sent again, not failed with a 502."""
    from modelyard.api.proxy import Upstream
    from modelyard.errors import RunnerUnreachableError

    real = Upstream.post
    calls = 0

    async def flaky(self: Upstream, url: str, payload: Any, headers: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RunnerUnreachableError("model server unreachable: Can not write request body")
        return await real(self, url, payload, headers)

    async with make_harness() as h:
        monkeypatch.setattr(Upstream, "post", flaky)
        original = h.scheduler.runner_unreachable

        async def quick(lease: Any, grace: float = 5.0) -> bool:
            return await original(lease, grace=0.05)

        monkeypatch.setattr(h.scheduler, "runner_unreachable", quick)
        answer = await h.call("/v1/chat/completions", CHAT)
        assert answer.status == 200
        assert calls == 2
        await idle(h)
