"""Metrics, events, activity and the timing header after a scripted sequence through the app
(real runner processes: the canned responder as the engine)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from modelyard.api.metrics import ENGINE_TIMEOUT
from tests.unit.api.conftest import Harness, canned_spec, until
from tests.unit.api.test_dispatch import idle

MiB = 1024**2


def chat(model: str, **script: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **script}


async def scrape(h: Harness) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await h.call("/metrics", method="GET")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.body.decode())
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def two_models(tmp: Path) -> tuple[Any, Any]:
    """Two models of which only one fits the harness's 1 GiB budget."""
    first = canned_spec(tmp, memory=600 * MiB, parallel=1, max_queue=0)
    return first, canned_spec(tmp, name="other", memory=600 * MiB)


async def test_metrics_after_a_scripted_sequence(make_harness: Callable, tmp_path: Path) -> None:
    async with make_harness(*two_models(tmp_path)) as h:
        route = "/v1/chat/completions"
        assert (await h.call(route, chat("canned"))).status == 200  # cold load
        assert (await h.call(route, chat("canned", stream=True, x_chunks=3))).status == 200
        assert (await h.call(route, chat("canned"))).status == 200
        busy = h.exchange(route, chat("canned", stream=True, x_chunks=20, x_delay_ms=20))
        await busy.first_chunk.wait()
        refused = await h.call(route, chat("canned"))
        assert refused.status == 429
        await busy.done
        assert (await h.call(route, chat("other"))).status == 200  # evicts canned
        engines = await scrape(h)
        assert value(engines, "llamacpp_requests_total", model="other") == 1
        # Memory by node and device: what "other" holds, and the budget it counts against.
        held = {"model": "other", "node": "local", "device": "ram"}
        assert value(engines, "modelyard_model_held_bytes", **held) == 600 * MiB
        assert value(engines, "modelyard_memory_used_bytes", node="local", device="ram") == (
            600 * MiB
        )
        (runner,) = [s for s in h.runner.started if s.base_url.endswith(_port(h, "other"))]
        os.kill(runner.pid, signal.SIGKILL)
        await until(lambda: h.scheduler.state("other") != "ready")

        m = await scrape(h)
        requests = "modelyard_requests_total"
        assert value(m, requests, model="canned", route=route, status="200") == 4
        assert value(m, requests, model="canned", route=route, status="429") == 1
        assert value(m, requests, model="other", route=route, status="200") == 1
        assert value(m, "modelyard_rejections_total", model="canned", reason="queue_full") == 1
        for model in ("canned", "other"):
            assert value(m, "modelyard_model_loads_total", model=model, outcome="ok") == 1
            assert value(m, "modelyard_model_load_duration_seconds_count", model=model) == 1
            assert value(m, "modelyard_load_wait_seconds_count", model=model) == 1
            assert value(m, "modelyard_model_loaded", model=model) == 0
            assert value(m, "modelyard_queue_depth", model=model) == 0
            assert value(m, "modelyard_in_flight", model=model) == 0
            assert value(m, "modelyard_model_memory_bytes", model=model, device="ram",
                         source="estimate") == 600 * MiB  # fmt: skip
        assert value(m, "modelyard_evictions_total", model="canned", reason="memory") == 1
        assert value(m, "modelyard_evictions_total", model="other", reason="crash") == 1
        assert value(m, "modelyard_runner_exits_total", model="canned", expected="true") == 1
        assert value(m, "modelyard_runner_exits_total", model="other", expected="false") == 1
        # Answers report 5 + 7 tokens (usage); streams 5 + one per chunk (llama.cpp's timings).
        assert value(m, "modelyard_tokens_total", model="canned", type="prompt") == 20
        assert value(m, "modelyard_tokens_total", model="canned", type="completion") == 37
        assert value(m, "modelyard_request_duration_seconds_count", model="canned") == 4
        assert value(m, "modelyard_queue_wait_seconds_count", model="canned") == 4
        assert value(m, "modelyard_time_to_first_token_seconds_count", model="canned") == 2
        assert value(m, "modelyard_time_per_output_token_seconds_count", model="canned") == 2
        assert value(m, "modelyard_memory_budget_bytes", node="local", device="ram") == 1024**3
        assert value(m, "modelyard_memory_used_bytes", node="local", device="ram") == 0
        assert not [k for k in m if k[0] == "modelyard_model_held_bytes"]
        # Nothing loaded: no engine metrics, and none counted as failed.
        assert not [k for k in m if k[0].startswith("llamacpp_")]
        assert not [k for k in m if k[0] == "modelyard_engine_scrape_failures_total"]


def _port(h: Harness, model: str) -> str:
    running = h.scheduler.running(model)
    assert running is not None
    return running.base_url.rsplit(":", 1)[1]


async def test_metrics_scrape_never_waits_for_a_loading_or_slow_engine(
    make_harness: Callable, tmp_path: Path
) -> None:
    slow = canned_spec(tmp_path, extra_args=("--metrics-delay-ms", "2000"))
    async with make_harness(slow) as h:
        h.runner.gate = asyncio.Event()
        waiting = h.exchange("/v1/chat/completions", chat("canned"))
        await until(lambda: h.ps()["queued"] == 1)
        started = time.perf_counter()
        m = await scrape(h)
        assert time.perf_counter() - started < 1.0
        assert value(m, "modelyard_queue_depth", model="canned") == 1
        assert value(m, "modelyard_model_loaded", model="canned") == 0
        h.runner.gate.set()
        assert (await waiting.done, waiting.status) == (None, 200)
        started = time.perf_counter()
        m = await scrape(h)  # the engine answers its /metrics in 2 s: left out
        assert time.perf_counter() - started < 1.0 + ENGINE_TIMEOUT
        assert value(m, "modelyard_model_loaded", model="canned") == 1
        assert value(m, "modelyard_engine_scrape_failures_total", model="canned") == 1
        assert not [k for k in m if k[0].startswith("llamacpp_")]


async def test_every_model_route_is_traced() -> None:
    from modelyard.api import anthropic, ollama, openai, responses
    from modelyard.api.routes import MODEL_ROUTES

    posts = {
        route.path  # type: ignore[attr-defined]
        for router in (openai.router, anthropic.router, ollama.router, responses.router)
        for route in router.routes
        if "POST" in getattr(route, "methods", ())
    }
    # Not model requests: Ollama's 501s, and a token count (the tokenizer, no generation).
    untraced = {"/api/create", "/api/copy", "/api/push", "/v1/messages/count_tokens"}
    assert posts - untraced == MODEL_ROUTES


async def test_server_timing_and_activity(make_harness: Callable) -> None:
    async with make_harness() as h:
        answer = await h.call(
            "/v1/chat/completions", chat("canned"), headers={"x-request-id": "r1"}
        )
        parts = dict(p.split(";dur=") for p in answer.headers["server-timing"].split(", "))
        assert set(parts) == {"queue", "load", "ttfb"}
        assert float(parts["load"]) > 0  # it waited for the load
        assert float(parts["ttfb"]) >= float(parts["load"])
        bad = await h.call("/v1/chat/completions", {"model": "canned", "messages": "x"})
        assert bad.status == 400
        activity = (await h.call("/api/activity", method="GET")).json()["requests"]
        first, second = activity
        assert first["request_id"] == "r1"
        assert (first["model"], first["status"], first["stream"]) == ("canned", 200, False)
        assert (first["prompt_tokens"], first["completion_tokens"]) == (5, 7)
        assert first["load_ms"] > 0
        assert first["total_ms"] >= first["load_ms"]
        assert (second["model"], second["status"]) == (None, 400)


async def test_activity_follow_is_live(make_harness: Callable) -> None:
    async with make_harness() as h:
        follow = h.exchange("/api/activity?follow=true", method="GET")
        await follow.first_chunk.wait()  # ": live"
        await h.call("/v1/chat/completions", chat("canned", stream=True, x_chunks=2))
        await until(lambda: b"event: request" in follow.body)
        follow.leave()
        await follow.done
        frame = follow.body.split(b"event: request\ndata: ")[1].split(b"\n\n")[0]
        data = json.loads(frame)
        assert (data["model"], data["stream"], data["completion_tokens"]) == ("canned", True, 2)
        assert data["ttft_ms"] is not None


async def test_activity_follow_in_batches_sends_them_together(make_harness: Callable) -> None:
    async with make_harness() as h:
        follow = h.exchange("/api/activity?follow=true&every=0.3", method="GET")
        await follow.first_chunk.wait()  # ": live"
        for _ in range(3):
            await h.call("/v1/chat/completions", chat("canned"))
        await until(lambda: follow.body.count(b"event: request") == 3)
        follow.leave()
        await follow.done
        # the live line, then the three in one write
        assert [c.count(b"event: request") for c in follow.chunks] == [0, 3]
        bad = await h.call("/api/activity?follow=true&every=60", method="GET")
        assert bad.status == 400


async def test_events_history_follow_and_bad_input(make_harness: Callable) -> None:
    async with make_harness() as h:
        follow = h.exchange("/api/events?follow=true&model=canned", method="GET")
        await follow.first_chunk.wait()
        await h.call("/v1/chat/completions", chat("canned"))
        await until(lambda: b"event: load_finished" in follow.body)
        follow.leave()
        await follow.done
        history = (await h.call("/api/events", method="GET")).json()
        kinds = [e["type"] for e in history["events"]]
        assert kinds == ["load_requested", "state_changed", "load_finished", "state_changed"]
        assert history["next"] == history["events"][-1]["id"]
        live_ids = [
            int(line[4:]) for line in follow.body.decode().splitlines() if line[:4] == "id: "
        ]
        assert live_ids == [e["id"] for e in history["events"]]
        # Reconnecting after the last id it saw: nothing missed, nothing twice.
        again = (await h.call(f"/api/events?after={history['next']}", method="GET")).json()
        assert again["events"] == []
        future = (await h.call("/api/events?since=2999-01-01T00:00:00Z", method="GET")).json()
        assert future["events"] == []
        recent = (await h.call("/api/events?since=1h", method="GET")).json()
        assert len(recent["events"]) == 4
        for query, param in (("since=yesterday-ish", "since"), ("after=x", "after")):
            bad = await h.call(f"/api/events?{query}", method="GET")
            assert bad.status == 400
            assert bad.json()["error"]["param"] == param
        unknown = await h.call("/api/events?model=nope", method="GET")
        assert unknown.status == 404


async def test_a_follower_that_stops_reading_is_dropped(make_harness: Callable) -> None:
    async with make_harness() as h:
        follow = h.exchange("/api/activity?follow=true", method="GET")
        await follow.first_chunk.wait()
        follow.reading.clear()  # never reads again
        activity = h.app.state.telemetry.activity
        await h.call("/v1/chat/completions", chat("canned"))  # the server now blocks on send
        trace = h.app.state.telemetry.activity.items()[-1]  # booked as it is read
        for _ in range(5000):
            activity.append(trace)
        assert activity.followers == 0  # dropped: nothing more is kept for it
        follow.reading.set()
        await follow.done
        assert follow.body.endswith(b'"this follower fell behind and was dropped"}\n\n')


async def test_logs_api(make_harness: Callable, tmp_path: Path) -> None:
    async with make_harness() as h:
        await h.call("/v1/chat/completions", chat("canned"))
        logs = (await h.call("/api/logs/canned?n=1", method="GET")).json()
        assert logs["name"] == "canned"
        assert len(logs["lines"]) == 1
        for path, status in (
            ("/api/logs/nope", 404),
            ("/api/logs/canned?n=-1", 400),
            ("/api/logs/canned?n=lots", 400),
        ):
            assert (await h.call(path, method="GET")).status == status, path
        follow = h.exchange("/api/logs/canned?n=0&follow=true", method="GET")
        await follow.first_chunk.wait()
        log_file = tmp_path / "home" / "logs" / "canned.log"
        with log_file.open("a") as f:
            f.write("a line written now\n")
        await until(lambda: b"a line written now" in follow.body)
        follow.leave()
        await follow.done
        assert follow.body.endswith(b'data: "a line written now"\n\n')
        await idle(h)


def test_engine_families_that_would_break_the_exposition_are_left_out() -> None:
    from prometheus_client.metrics_core import Metric

    from modelyard.api.metrics import _exposition, _labelled, _merge

    def family(name: str, kind: str, value: float) -> Metric:
        metric = Metric(name, "help", kind)
        metric.add_sample(name + ("_total" if kind == "counter" else ""), {}, value)
        return metric

    vllm = _labelled(
        [family("vllm:running", "gauge", 2), family("modelyard_x", "gauge", 1)], {"model": "a"}
    )
    other = _labelled(
        [family("vllm:running", "counter", 5)], {"model": "b"}
    )  # same name, other type
    text = _exposition(_merge([vllm, other])).decode()
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert list(parsed) == ["vllm_running"]
    assert [(s.labels, s.value) for s in parsed["vllm_running"].samples] == [({"model": "a"}, 2)]


async def test_memory_is_reported_per_node_and_device(
    make_harness: Callable, tmp_path: Path
) -> None:
    """``/api/ps``, the events and the metrics say on which node memory is held (one node,
    ``local``, on one machine), beside the totals per device."""
    async with make_harness(canned_spec(tmp_path, memory=600 * MiB)) as h:
        assert (await h.call("/v1/chat/completions", chat("canned"))).status == 200
        ps = (await h.call("/api/ps", method="GET")).json()
        (model,) = ps["models"]
        assert model["memory"]["nodes"] == {"local": {"ram": 600 * MiB}}
        assert ps["memory"]["nodes"] == {
            "local": {"budget": {"ram": 1024**3}, "reserved": {"ram": 600 * MiB}}
        }
        assert ps["memory"]["reserved"] == {"ram": 600 * MiB}
        events = (await h.call("/api/events", method="GET")).json()["events"]
        (finished,) = [e for e in events if e["type"] == "load_finished"]
        assert finished["node"] == "local"
        (requested,) = [e for e in events if e["type"] == "load_requested"]
        assert requested["node"] is None  # before a node is chosen
        await h.call("/api/unload", {"model": "canned"})
        await until(lambda: h.scheduler.state("canned") == "stopped")
        ps = (await h.call("/api/ps", method="GET")).json()
        assert ps["memory"]["nodes"]["local"]["reserved"] == {}
