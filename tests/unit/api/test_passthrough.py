"""/upstream/{model}/{path}: the engine's own API through the gateway (canned responder)."""

from __future__ import annotations

from collections.abc import Callable

from modelyard.scheduler import ModelState


async def test_passthrough_loads_the_model_and_adds_its_key(make_harness: Callable) -> None:
    async with make_harness() as h:
        health = await h.call("/upstream/canned/health", method="GET")
        assert health.status == 200
        assert h.scheduler.state("canned") is ModelState.READY  # loaded for it
        # The responder answers only requests with the runner's key: the gateway added it.
        chat = {"model": "canned", "messages": [{"role": "user", "content": "hi"}]}
        answer = await h.call("/upstream/canned/v1/chat/completions", chat)
        assert answer.status == 200
        assert answer.json()["choices"][0]["message"]["content"].startswith("Hello")
        assert answer.headers["content-type"].startswith("application/json")
        assert h.ps() == {"in_flight": 0, "queued": 0}  # its slot is back
        missing = await h.call("/upstream/canned/no/such/path", method="GET")
        assert missing.status == 404  # the engine's own answer, passed on


async def test_passthrough_unknown_model_and_other_sites(make_harness: Callable) -> None:
    async with make_harness() as h:
        unknown = await h.call("/upstream/nope/props", method="GET")
        assert unknown.status == 404
        assert unknown.json()["error"]["code"] == "model_not_found"
        cross = await h.call(
            "/upstream/canned/slots/0?action=erase",
            raw=b"{}",
            headers={"Origin": "http://evil.example", "Content-Type": "text/plain"},
        )
        assert cross.status == 403
