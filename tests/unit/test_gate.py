"""The gate: the port answers before the app has started, and nothing sent early is lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from modelyard.gate import ASGIApp, Gate, Message


class Lifespan:
    """uvicorn's side of the lifespan protocol, driven by hand."""

    def __init__(self, gate: Gate) -> None:
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.outbox: asyncio.Queue[Message] = asyncio.Queue()
        self.task = asyncio.ensure_future(
            gate({"type": "lifespan"}, self.inbox.get, self.outbox.put)
        )

    async def send(self, kind: str) -> str:
        await self.inbox.put({"type": f"lifespan.{kind}"})
        return str((await asyncio.wait_for(self.outbox.get(), 5))["type"])


def slow_app(release: threading.Event, started: list[str], fail: bool = False) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(release.wait, 5)
        if fail:
            raise RuntimeError("the accounts database cannot be opened")
        started.append("up")
        yield
        started.append("down")

    app = FastAPI(lifespan=lifespan)

    @app.get("/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/echo")
    async def echo(body: dict[str, Any]) -> dict[str, Any]:
        return {"echo": body, "started": list(started)}

    return app


def client(gate: Gate) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=gate)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://gate")


async def test_health_answers_at_once_and_early_requests_wait_for_the_app() -> None:
    release, started, failures = threading.Event(), [], []

    def build() -> ASGIApp:
        return slow_app(release, started)  # type: ignore[return-value]

    gate = Gate(build, on_failure=lambda: failures.append(1))
    lifespan = Lifespan(gate)
    assert await lifespan.send("startup") == "lifespan.startup.complete"  # at once
    async with client(gate) as http:
        health = await http.get("/health")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        ready = await http.get("/ready")
        assert (ready.status_code, ready.json()) == (503, {"status": "starting"})
        assert ready.headers["retry-after"] == "1"
        early = asyncio.ensure_future(http.post("/v1/echo", json={"n": 1}))
        await asyncio.sleep(0.2)
        assert not early.done()  # held, not refused
        release.set()
        answer = await asyncio.wait_for(early, 5)
        assert answer.json() == {"echo": {"n": 1}, "started": ["up"]}
        assert (await http.get("/ready")).json() == {"status": "ready"}  # the app's own
        assert gate.started
    assert await lifespan.send("shutdown") == "lifespan.shutdown.complete"
    assert started == ["up", "down"]
    assert not failures


async def test_an_app_that_fails_to_start_answers_503_and_stops_the_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release, started, failures = threading.Event(), [], []
    release.set()

    def build() -> ASGIApp:
        return slow_app(release, started, fail=True)  # type: ignore[return-value]

    gate = Gate(build, on_failure=lambda: failures.append(1))
    lifespan = Lifespan(gate)
    assert await lifespan.send("startup") == "lifespan.startup.complete"
    async with client(gate) as http:
        answer = await http.post("/v1/echo", json={})
        assert answer.status_code == 503
        assert answer.json()["error"]["message"] == "the server failed to start"
        assert (await http.get("/health")).status_code == 503  # no longer "ok"
    assert failures == [1]
    assert "the accounts database cannot be opened" in caplog.text
    assert await lifespan.send("shutdown") == "lifespan.shutdown.complete"


async def test_an_app_that_cannot_be_built_stops_the_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures: list[int] = []

    def build() -> ASGIApp:
        raise ImportError("No module named 'sqlalchemy'")

    gate = Gate(build, on_failure=lambda: failures.append(1))
    lifespan = Lifespan(gate)
    assert await lifespan.send("startup") == "lifespan.startup.complete"
    async with client(gate) as http:
        assert (await http.get("/v1/models")).status_code == 503
    assert failures == [1]
    assert "No module named 'sqlalchemy'" in caplog.text


async def test_a_stop_during_the_start_waits_for_it_and_then_stops_the_app() -> None:
    release, started = threading.Event(), []

    def build() -> ASGIApp:
        return slow_app(release, started)  # type: ignore[return-value]

    gate = Gate(build, on_failure=lambda: None)
    lifespan = Lifespan(gate)
    assert await lifespan.send("startup") == "lifespan.startup.complete"
    stopping = asyncio.ensure_future(lifespan.send("shutdown"))
    await asyncio.sleep(0.1)
    assert not stopping.done()
    release.set()
    assert await asyncio.wait_for(stopping, 5) == "lifespan.shutdown.complete"
    assert started == ["up", "down"]  # nothing it started is left running


def test_the_gate_imports_nothing_slow() -> None:
    import subprocess
    import sys

    code = "import sys, modelyard.server; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    loaded = set(json.loads(out))
    assert not loaded & {"fastapi", "sqlalchemy", "aiohttp", "modelyard.api.app"}, loaded
