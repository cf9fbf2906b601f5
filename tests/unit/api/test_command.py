"""The command engine: any program serving an OpenAI-compatible API as a model's runner.

The canned responder plays the program (as vLLM, Infinity … would); the fault table covers a
program that never gets healthy, exits at once, listens on another port, ignores SIGTERM or
prints 10 MB, each with its documented outcome and no process left behind."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from modelyard.catalog.spec import ModelSpec
from tests.fake import RESPONDER

MiB = 1024**2


def command_spec(*args: str, **kw: Any) -> ModelSpec:
    base = ModelSpec(
        name="cmd",
        path=Path(),
        engine="command",
        command=(sys.executable, str(RESPONDER), "--port", "{port}", *args),
        served=("chat", "completion"),
        memory=16 * MiB,
        parallel=2,
        max_queue=2,
        keep_alive=None,
        ready_timeout=20.0,
    )
    return replace(base, **kw)


def chat(**script: Any) -> dict[str, Any]:
    return {"model": "cmd", "messages": [{"role": "user", "content": "hi"}], **script}


def marked(marker: str) -> list[psutil.Process]:
    """Processes whose command line carries ``marker`` (to find leftovers)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if marker in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


async def test_command_engine_serves_and_rewrites_the_model(make_harness: Callable) -> None:
    spec = command_spec("--api-key", "{key}", upstream_model="org/real-name")
    async with make_harness(spec) as h:
        answer = await h.call("/v1/chat/completions", chat(x_echo=True))
        assert answer.status == 200
        echoed = answer.json()
        assert echoed["received"]["model"] == "org/real-name"  # the name the engine expects
        assert echoed["authorization"] is True  # the command took {key}: the gateway sends it
        streamed = await h.call("/v1/chat/completions", chat(stream=True, x_chunks=3))
        assert streamed.events()[-1] == "[DONE]"
        status = h.app.state.telemetry.activity.items()[-1]
        assert (status.model, status.completion_tokens) == ("cmd", 3)
        assert h.ps("cmd") == {"in_flight": 0, "queued": 0}


async def test_command_engine_without_key_placeholder_gets_no_key(
    make_harness: Callable,
) -> None:
    async with make_harness(command_spec()) as h:
        answer = await h.call("/v1/chat/completions", chat(x_echo=True))
        received = {**chat(x_echo=True), "stream": False}
        assert answer.json() == {"received": received, "authorization": False}


async def test_the_engine_gets_the_body_as_the_client_wrote_it(make_harness: Callable) -> None:
    """Integers past 64 bits stay integers, text stays text; what is not JSON (NaN) is
    refused before it reaches the engine."""
    exact = chat(
        x_echo=True,
        x_big=123456789012345678901234567890,
        x_negative=-9223372036854775809,
        x_text="naïve \u2028 🦙",
    )
    async with make_harness(command_spec()) as h:
        answer = await h.call("/v1/chat/completions", exact)
        assert answer.json()["received"] == {**exact, "stream": False}
        raw = b'{"model": "cmd", "messages": [], "temperature": NaN}'
        refused = await h.call("/v1/chat/completions", raw=raw)
        assert refused.status == 400
        assert "NaN is not a JSON value" in refused.json()["error"]["message"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            command_spec(health="/nope", ready_timeout=1.5),
            "runner not healthy after 2s",
        ),
        (
            replace(
                command_spec(),
                command=(sys.executable, "-c", "print('cannot start: no GPU'); exit(3)", "{port}"),
            ),
            "cannot start: no GPU",
        ),
        (
            replace(
                command_spec(ready_timeout=1.5),
                command=(sys.executable, str(RESPONDER), "--port", "0", "--x", "{port}"),
            ),
            "runner not healthy after 2s",
        ),
    ],
    ids=["never-healthy", "exits-at-once", "wrong-port"],
)
async def test_command_engine_load_failures(
    make_harness: Callable, spec: ModelSpec, expected: str
) -> None:
    async with make_harness(spec) as h:
        started = time.monotonic()
        answer = await h.call("/v1/chat/completions", chat())
        assert answer.status == 503
        error = answer.json()["error"]
        assert error["code"] == "model_load_failed"
        assert expected in error["message"]
        assert time.monotonic() - started < 10
        assert marked(str(RESPONDER)) == []  # nothing left running


async def test_command_engine_that_ignores_sigterm_is_killed(make_harness: Callable) -> None:
    spec = command_spec("--ignore-sigterm", stop_timeout=0.5)
    async with make_harness(spec) as h:
        assert (await h.call("/v1/chat/completions", chat())).status == 200
        pid = h.scheduler.running("cmd").pid  # type: ignore[union-attr]
        started = time.monotonic()
        unload = await h.call("/api/unload", {"model": "cmd"})
        assert unload.status == 200
        assert 0.4 < time.monotonic() - started < 5  # SIGTERM ignored, SIGKILL after 0.5 s
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        events = [e.to_dict() for e in h.scheduler.journal.entries(model="cmd")]
        exits = [e for e in events if e["type"] == "runner_exited"]
        assert exits[-1]["expected"] is True
        assert exits[-1]["code"] == -9


async def test_command_engine_output_is_rotated(make_harness: Callable, tmp_path: Path) -> None:
    spec = command_spec("--noise-mb", "10")
    async with make_harness(spec, log_max_size=2 * MiB, log_files=2) as h:
        assert (await h.call("/v1/chat/completions", chat())).status == 200
        logs = sorted((tmp_path / "home" / "logs").glob("cmd.log*"))
        assert [p.name for p in logs] == ["cmd.log", "cmd.log.1", "cmd.log.2"]
        assert all(p.stat().st_size <= 2 * MiB + 65536 for p in logs)  # the cap, plus one read


async def test_command_engine_metrics_are_merged_when_asked_for(make_harness: Callable) -> None:
    from tests.unit.api.test_observe import scrape, value

    plain, measured = command_spec(), command_spec(name="measured", metrics="/metrics")
    async with make_harness(plain, measured) as h:
        for model in ("cmd", "measured"):
            assert (await h.call("/v1/chat/completions", chat(model=model))).status == 200
        m = await scrape(h)
        assert value(m, "llamacpp_requests_total", model="measured") == 1  # the engine's own
        assert value(m, "llamacpp_requests_total", model="cmd") is None  # not asked for
        assert value(m, "modelyard_requests_total", model="cmd",
                     route="/v1/chat/completions", status="200") == 1  # fmt: skip


async def test_command_engine_shows_its_command(make_harness: Callable) -> None:
    async with make_harness(command_spec()) as h:
        shown = (await h.call("/api/show", {"model": "cmd"})).json()
        assert (shown["engine"], shown["path"]) == ("command", None)
        assert shown["settings"]["command"][-1] == "{port}"
        assert shown["memory"]["estimate"] == {"ram": 16 * MiB}  # as declared
        models = (await h.call("/v1/models", method="GET")).json()["data"]
        assert [(m["id"], m["capabilities"]) for m in models] == [("cmd", ["chat", "completion"])]


async def wait_state(h: Any, model: str, state: str, limit: float = 5.0) -> dict[str, Any]:
    """``/api/ps``'s entry for ``model`` once it is in ``state``."""
    deadline = time.monotonic() + limit
    while True:
        models = (await h.call("/api/ps", method="GET")).json()["models"]
        found = [m for m in models if m["name"] == model]
        if found and found[0]["state"] == state:
            return dict(found[0])
        assert time.monotonic() < deadline, f"{model} not {state}: {found}"
        await asyncio.sleep(0.05)


async def test_command_engine_sleeps_when_idle_and_wakes_for_a_request(
    make_harness: Callable,
) -> None:
    import aiohttp

    spec = command_spec(
        "--enable-sleep-mode", "--ballast-mb", "96", memory=None, sleep_level=2, keep_alive=0.3
    )
    async with make_harness(spec) as h:
        assert (await h.call("/v1/chat/completions", chat())).status == 200
        running = h.scheduler.running("cmd")
        assert running is not None
        awake = running.footprint()["ram"]
        asleep = await wait_state(h, "cmd", "sleeping")
        assert asleep["pid"] == running.pid  # the same process, asleep
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{running.base_url}/is_sleeping") as response,
        ):
            assert await response.json() == {"is_sleeping": True}
        # Once asleep, counted by what it holds then: level 2 gave back the 96 MiB it held.
        deadline = time.monotonic() + 5
        while (held := h.scheduler.reserved()["ram"]) >= awake - 64 * MiB:
            assert time.monotonic() < deadline, (held, awake)
            await asyncio.sleep(0.05)
        asleep = await wait_state(h, "cmd", "sleeping")
        assert asleep["memory"]["held"] == {"ram": held}

        answer = await h.call("/v1/chat/completions", chat())
        assert answer.status == 200
        assert h.scheduler.running("cmd") is running  # woken, not started again
        events = [e.to_dict() for e in h.scheduler.journal.entries(model="cmd")]
        evicted = [e for e in events if e["type"] == "evicted"]
        assert evicted[-1]["detail"] == "keep-alive expired; asleep (level 2)"
        woken = [e for e in events if e["type"] == "state_changed" and e["reason"] == "woken"]
        assert len(woken) == 1
        await h.call("/api/unload", {"model": "cmd"})
        assert not psutil.pid_exists(running.pid) or psutil.Process(running.pid).status() == (
            "zombie"
        )


async def test_command_engine_that_cannot_sleep_is_stopped(make_harness: Callable) -> None:
    spec = command_spec(sleep_level=1, keep_alive=0.3)  # no --enable-sleep-mode: /sleep is 404
    async with make_harness(spec) as h:
        assert (await h.call("/v1/chat/completions", chat())).status == 200
        deadline = time.monotonic() + 5
        while h.scheduler.state("cmd") != "stopped":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        events = [e.to_dict() for e in h.scheduler.journal.entries(model="cmd")]
        details = [e["detail"] for e in events if e["type"] == "evicted"]
        assert any("sleep failed: POST /sleep?level=1 answered 404" in d for d in details)
        assert marked(str(RESPONDER)) == []
