"""Inputs that once gave 500s or hung, and admin routes that other web sites could reach."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.unit.api.conftest import canned_spec


def code(exchange: Any) -> str | None:
    """The error's code: OpenAI's envelope has it in ``error``, Ollama's beside it."""
    data = exchange.json()
    error = data["error"]
    return error.get("code") if isinstance(error, dict) else data.get("code")


CHAT = {"model": "canned", "messages": [{"role": "user", "content": "hi"}]}
ADMIN_ROUTES = [
    ("POST", "/api/load", {"model": "canned"}),
    ("POST", "/api/unload", {"model": "canned"}),
    ("POST", "/api/pull", {"model": "owner/repo"}),
    ("POST", "/api/show", {"model": "canned"}),
    ("POST", "/api/reload", {}),
    ("DELETE", "/api/delete", {"model": "canned"}),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
async def test_guard_admin_refuses_cross_site(
    make_harness: Callable, method: str, path: str, body: object
) -> None:
    async with make_harness() as h:
        raw = json.dumps(body).encode()
        # What a page elsewhere can make a browser send without a preflight.
        simple = await h.call(
            path,
            method=method,
            raw=raw,
            headers={"Origin": "http://evil.example", "Content-Type": "text/plain"},
        )
        assert simple.status == 403
        assert code(simple) == "cross_site_request"
        fetched = await h.call(
            path, method=method, raw=raw, headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert fetched.status == 403
        # Even from this server's own origin, a browser's body must be JSON.
        plain = await h.call(
            path,
            method=method,
            raw=raw,
            headers={"Origin": "http://127.0.0.1:8000", "Content-Type": "text/plain"},
        )
        assert plain.status == 415
        assert code(plain) == "unsupported_media_type"
        assert h.scheduler.state("canned") == "stopped"  # nothing was done


async def test_guard_admin_accepts_programs_and_its_own_pages(make_harness: Callable) -> None:
    async with make_harness() as h:
        loaded = await h.call("/api/load", {"model": "canned"})
        assert loaded.status == 200
        assert loaded.json()["state"] == "ready"
        own_page = await h.call(
            "/api/unload",
            {"model": "canned"},
            headers={"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"},
        )
        assert own_page.status == 200
        assert own_page.json()["state"] == "stopped"
        reload_without_body = await h.call("/api/reload")
        assert reload_without_body.status == 400  # no config to reload here, but not refused
        assert "without a configuration" in reload_without_body.json()["error"]["message"]


async def test_guard_curl_form_posts_work_as_ollamas_docs_show(make_harness: Callable) -> None:
    """``curl URL -d '{"model": …}'`` sends ``application/x-www-form-urlencoded``; no browser
    made it (no Origin, no Sec-Fetch-*), so its content type is no reason to refuse it."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    async with make_harness() as h:
        raw = json.dumps({"model": "canned"}).encode()
        shown = await h.call("/api/show", raw=raw, headers=form)
        assert shown.status == 200, shown.body
        assert "capabilities" in shown.json()
        deleted = await h.call("/api/delete", method="DELETE", raw=raw, headers=form)
        assert deleted.status != 415
        # The same form from a page elsewhere is still refused.
        evil = await h.call("/api/show", raw=raw, headers={**form, "Origin": "http://evil.example"})
        assert evil.status == 403


async def test_guard_huge_headers_are_431(make_harness: Callable) -> None:
    async with make_harness() as h:
        refused = await h.call("/v1/models", method="GET", headers={"X-Big": "a" * 40_000})
        assert refused.status == 431
        assert code(refused) == "headers_too_large"
        cookies = await h.call("/v1/models", method="GET", headers={"Cookie": "a=" + "b" * 8000})
        assert cookies.status == 200


async def test_guard_body_too_large_is_413_before_reading(make_harness: Callable) -> None:
    async with make_harness(max_request_size=1024) as h:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
        refused = await h.call("/v1/chat/completions", big)
        assert refused.status == 413
        assert refused.json()["error"]["code"] == "request_too_large"
        assert refused.headers["connection"] == "close"
        fine = await h.call("/v1/chat/completions", CHAT)
        assert fine.status == 200


async def test_guard_cors_is_off_until_origins_are_named(make_harness: Callable) -> None:
    preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
    async with make_harness() as h:
        answer = await h.call("/v1/chat/completions", method="OPTIONS", headers=preflight)
        assert "access-control-allow-origin" not in answer.headers
        listed = await h.call("/v1/models", method="GET", headers={"Origin": preflight["Origin"]})
        assert "access-control-allow-origin" not in listed.headers


async def test_guard_cors_for_named_origins(make_harness: Callable) -> None:
    page = "http://localhost:3000"
    async with make_harness(cors_origins=(page,)) as h:
        asked = {"Origin": page, "Access-Control-Request-Method": "POST"}
        ok = await h.call("/v1/chat/completions", method="OPTIONS", headers=asked)
        assert ok.status == 200
        assert ok.headers["access-control-allow-origin"] == page
        answered = await h.call("/v1/chat/completions", CHAT, headers={"Origin": page})
        assert answered.status == 200
        assert answered.headers["access-control-allow-origin"] == page
        assert "x-request-id" in answered.headers["access-control-expose-headers"]
        other = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
        refused = await h.call("/v1/chat/completions", method="OPTIONS", headers=other)
        assert "access-control-allow-origin" not in refused.headers
        # A named page may manage models too (JSON, after its preflight); others may not.
        managed = await h.call("/api/load", {"model": "canned"}, headers={"Origin": page})
        assert managed.status == 200
        evil = await h.call("/api/unload", {"model": "canned"}, headers={"Origin": other["Origin"]})
        assert evil.status == 403


async def test_guard_cors_any_origin_never_opens_the_admin_routes(make_harness: Callable) -> None:
    async with make_harness(cors_origins=("*",)) as h:
        page = {"Origin": "http://anywhere.example"}
        listed = await h.call("/v1/models", method="GET", headers=page)
        assert listed.headers["access-control-allow-origin"] == "*"
        admin = await h.call("/api/load", {"model": "canned"}, headers=page)
        assert admin.status == 403
        assert h.scheduler.state("canned") == "stopped"


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({**CHAT, "max_tokens": 10**12}, "max_tokens", "less than or equal"),
        ({**CHAT, "n": 1000}, "n", "less than or equal"),
        ({**CHAT, "logit_bias": {str(i): 1 for i in range(300_000)}}, "logit_bias", "at most"),
        ({**CHAT, "model": "m" * 10_000}, "model", "at most"),
        ({**CHAT, "keep_alive": "soon"}, "keep_alive", "invalid duration"),
        ({**CHAT, "keep_alive": False}, "keep_alive", "not a bool"),  # would unload at once
    ],
)
async def test_guard_bounds_are_400_with_the_field(
    make_harness: Callable, body: dict[str, object], param: str, words: str
) -> None:
    async with make_harness() as h:
        answer = await asyncio.wait_for(h.call("/v1/chat/completions", body), 10)
        assert answer.status == 400
        error = answer.json()["error"]
        assert error["param"] == param
        assert words in error["message"]


async def test_guard_json_nested_too_deep_is_400(make_harness: Callable) -> None:
    async with make_harness() as h:
        for depth in (100, 100_000):
            raw = b'{"model": "canned", "x": ' + b"[" * depth + b"]" * depth + b"}"
            answer = await h.call("/v1/chat/completions", raw=raw)
            assert answer.status == 400
            assert "nests deeper" in answer.json()["error"]["message"]
        tools = [{"type": "function", "function": {"parameters": {"a": {"b": {"c": [{}]}}}}}]
        assert (await h.call("/v1/chat/completions", {**CHAT, "tools": tools})).status == 200


async def test_guard_image_for_a_model_without_projector_is_400(make_harness: Callable) -> None:
    async with make_harness() as h:
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
        body = {**CHAT, "messages": [{"role": "user", "content": [image]}]}
        answer = await h.call("/v1/chat/completions", body)
        assert answer.status == 400
        assert answer.json()["error"]["code"] == "unsupported_feature"
        assert "mmproj" in answer.json()["error"]["message"]
        assert h.scheduler.state("canned") == "stopped"  # refused before loading anything


async def test_guard_tools_for_a_builtin_chat_format_are_400(
    make_harness: Callable, tmp_path: Path
) -> None:
    # llama3: a built-in format with no Jinja equivalent shipped (gemma and chatml have one).
    async with make_harness(canned_spec(tmp_path, chat_template="llama3")) as h:
        tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
        answer = await h.call("/v1/chat/completions", {**CHAT, "tools": tools})
        assert answer.status == 400  # llama.cpp itself answers 500 "requires --jinja"
        assert answer.json()["error"]["param"] == "tools"
        assert "Jinja" in answer.json()["error"]["message"]


async def test_guard_max_tokens_beyond_context_is_capped(
    make_harness: Callable, tmp_path: Path
) -> None:
    async with make_harness(canned_spec(tmp_path, ctx=512)) as h:
        answer = await h.call("/v1/chat/completions", {**CHAT, "max_tokens": 2**31 - 1})
        assert answer.status == 200


async def test_guard_keep_alive_beyond_any_calendar_shows_never(make_harness: Callable) -> None:
    async with make_harness() as h:
        for keep_alive in (1e308, "1e12", "-1"):
            answer = await h.call("/v1/chat/completions", {**CHAT, "keep_alive": keep_alive})
            assert answer.status == 200
            ps = await h.call("/api/ps", method="GET")
            assert ps.status == 200
            (model,) = ps.json()["models"]
            assert model["expires_at"] is None
            assert (await h.call("/api/models", method="GET")).status == 200


async def test_guard_pull_refs_checked_before_the_hub(make_harness: Callable) -> None:
    async with make_harness() as h:
        for ref in ("a/..", "x/" + "y" * 10_000, "a/b@../../etc", "../a/b"):
            answer = await h.call("/api/pull", {"model": ref, "stream": False})
            assert answer.status == 400, ref
            assert "model" in answer.json()["error"]  # Ollama's shape on its route: no param


async def test_guard_runner_address_not_published(make_harness: Callable) -> None:
    async with make_harness() as h:
        await h.call("/api/load", {"model": "canned"})
        ps = (await h.call("/api/ps", method="GET")).json()
        (model,) = ps["models"]
        assert "base_url" not in model
        assert str(h.runner.started[0].base_url) not in json.dumps(ps)


async def test_guard_pull_failing_midway_ends_with_error_frame(
    make_harness: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard.api import models
    from modelyard.hub.pull import Progress

    def dropped(ref: object, directory: Path, hub: object, progress: Callable, cancel: object):
        progress(Progress("downloading", "model.gguf", 1024, 4096))
        raise ConnectionResetError("connection reset by peer")

    class Reloader:
        config = type("C", (), {"models_dir": tmp_path})

        async def reload(self) -> None:
            return None

    monkeypatch.setattr(models, "pull", dropped)
    async with make_harness() as h:
        h.app.state.reloader = Reloader()
        sse = {"Accept": "text/event-stream"}  # as modelyard's CLI asks; Ollama's get NDJSON
        streamed = await h.call("/api/pull", {"model": "owner/repo"}, headers=sse)
        assert streamed.status == 200
        events = streamed.events()
        assert events[0]["status"] == "downloading"
        assert events[-2]["error"]["code"] == "hub_error"
        assert "connection reset" in events[-2]["error"]["message"]
        assert events[-1] == "[DONE]"
        whole = await h.call("/api/pull", {"model": "owner/repo", "stream": False})
        assert whole.status == 502
        assert code(whole) == "hub_error"
