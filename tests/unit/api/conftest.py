"""The app in-process, over the canned responder (``bench/responder.py``) as its engine.

The responder runs as a real runner process started by the real llama.cpp runner code (it
takes llama-server's flags and checks the runner key), so these tests cover the whole
serving path but the model. ``Exchange`` drives one request through the ASGI app by hand,
so a test can make the client leave at any point.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.types import Message

from modelyard.api.app import create_app
from modelyard.catalog.spec import Footprint, ModelSpec
from modelyard.config import Config
from modelyard.engines.command.runner import CommandRunner
from modelyard.engines.llamacpp.runner import LlamaCppRunner
from modelyard.logbook import Rotation
from modelyard.runners.process import ChildServer
from modelyard.scheduler import Scheduler
from tests.fake import responder_binary


class GatedRunner:
    """The llama.cpp runner, whose loads wait for ``gate`` when a test sets one."""

    def __init__(self, log_dir: Path) -> None:
        self._runner = LlamaCppRunner(log_dir, load_timeout=30)
        self.gate: asyncio.Event | None = None
        self.started: list[ChildServer] = []

    def estimate(self, spec: ModelSpec) -> Footprint:
        return self._runner.estimate(spec)

    async def start(self, spec: ModelSpec) -> ChildServer:
        if self.gate is not None:
            await self.gate.wait()
        server = await self._runner.start(spec)
        self.started.append(server)
        return server


@dataclass
class Harness:
    app: FastAPI
    runner: GatedRunner

    @property
    def scheduler(self) -> Scheduler:
        scheduler: Scheduler = self.app.state.scheduler
        return scheduler

    def exchange(
        self,
        path: str,
        body: Any = None,
        *,
        method: str = "POST",
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Exchange:
        return Exchange(self.app, method, path, body, headers or {}, raw)

    async def call(self, path: str, body: Any = None, **kw: Any) -> Exchange:
        exchange = self.exchange(path, body, **kw)
        await exchange.done
        return exchange

    def ps(self, model: str = "canned") -> dict[str, int]:
        (status,) = [s for s in self.scheduler.status() if s.name == model]
        return {"in_flight": status.in_flight, "queued": status.queued}


class Exchange:
    """One request through the ASGI app, as a client that can leave whenever it likes."""

    def __init__(
        self,
        app: FastAPI,
        method: str,
        path: str,
        body: Any,
        headers: dict[str, str],
        raw: bytes | None,
    ) -> None:
        data = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
        headers = {"host": "127.0.0.1:8000", **{k.lower(): v for k, v in headers.items()}}
        if data and "content-type" not in headers:
            headers["content-type"] = "application/json"
        headers.setdefault("content-length", str(len(data)))
        path, _, query = path.partition("?")
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        self._body = data
        self._sent_body = False
        self._left = asyncio.Event()
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.started = asyncio.Event()
        self.first_chunk = asyncio.Event()
        self._arrived = asyncio.Event()
        self.reading = asyncio.Event()
        """Cleared: the client stops reading (the server's next send blocks, as a full
        socket buffer would make it)."""
        self.reading.set()
        self.done = asyncio.ensure_future(app(self.scope, self._receive, self._send))

    async def _receive(self) -> Message:
        if not self._sent_body:
            self._sent_body = True
            return {"type": "http.request", "body": self._body, "more_body": False}
        await self._left.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode(): v.decode() for k, v in message.get("headers", [])}
            self.started.set()
        elif message["type"] == "http.response.body" and message.get("body"):
            await self.reading.wait()
            self.chunks.append(message["body"])
            self.first_chunk.set()
            self._arrived.set()

    async def until(self, events: int) -> None:
        """Waits until ``events`` SSE events have come."""
        while self.body.count(b"data: ") < events:
            self._arrived.clear()
            await self._arrived.wait()

    def leave(self) -> None:
        """The client disconnects."""
        self._left.set()

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[Any]:
        """The SSE ``data:`` payloads, decoded (``[DONE]`` as the string)."""
        out: list[Any] = []
        for block in self.body.split(b"\n\n"):
            if block.startswith(b"data: "):
                data = block[6:]
                out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
        return out


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Waits for the state a test expects next (not for a time): fails after ``within``."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the state never came"
        await asyncio.sleep(0.005)


def canned_spec(tmp: Path, **kw: Any) -> ModelSpec:
    model = tmp / "canned.gguf"
    model.write_bytes(b"GGUF")
    base = ModelSpec(
        name="canned",
        path=model,
        llama_server=responder_binary(tmp),
        memory=16 * 1024**2,
        parallel=2,
        max_queue=2,
        queue_timeout=30.0,
        keep_alive=None,
    )
    return replace(base, **kw)


@pytest.fixture
def make_harness(
    tmp_path: Path,
) -> Callable[..., Any]:
    @asynccontextmanager
    async def make(*specs: ModelSpec, **config: Any) -> AsyncIterator[Harness]:
        home = tmp_path / "home"
        cfg = Config(
            host="127.0.0.1",
            port=8000,
            home=home,
            models_dir=tmp_path / "models",
            ram="1GiB",
            min_residency=0.0,
            stop_grace=2.0,
            log_level="info",
            measure_interval=0.0,
            models=list(specs) or [canned_spec(tmp_path)],
            **config,
        )
        runner = GatedRunner(home / "logs")
        rotation = Rotation(cfg.log_max_size, cfg.log_files)
        runners = {"llamacpp": runner, "command": CommandRunner(home / "logs", rotation)}
        app = create_app(cfg, runners=runners, budget={"ram": 1024**3})
        async with app.router.lifespan_context(app):
            yield Harness(app, runner)

    return make
