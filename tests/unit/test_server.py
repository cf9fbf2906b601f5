"""The serving process's own settings, and its deadline for clients sending a request."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from modelyard.server import _HeadWithBody, protocol


def test_the_open_files_limit_is_raised_to_what_the_system_allows() -> None:
    # In a child: the limit is the process's own.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    code = (
        "import resource\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "from modelyard.server import open_files_limit\n"
        "print(open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    returned, now = (int(n) for n in out.stdout.split())
    assert returned == now
    expected = 65536 if hard == resource.RLIM_INFINITY else hard
    assert now == expected > 256, (soft, hard)


async def _answer_ok(scope: dict, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.asynccontextmanager
async def _serving(header_timeout: float, app: Any = _answer_ok) -> AsyncIterator[int]:
    """uvicorn on a free port with the server's protocol; yields the port."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        http=protocol(header_timeout),
        lifespan="off",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn sets a flag, no event)
        await asyncio.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


async def _closed_after(reader: asyncio.StreamReader) -> float:
    """Seconds until the server closes the connection (having answered nothing)."""
    t = time.monotonic()
    assert await asyncio.wait_for(reader.read(1024), 5) == b""
    return time.monotonic() - t


async def test_a_client_that_stalls_its_headers_or_body_is_dropped() -> None:
    async with _serving(0.3) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert 0.25 < await _closed_after(reader) < 1.5
        writer.close()
        await writer.wait_closed()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        assert 0.25 < await _closed_after(reader) < 1.5
        writer.close()
        await writer.wait_closed()


async def test_clients_that_keep_sending_are_never_dropped() -> None:
    """Each piece of a body moves the deadline; a kept-alive connection has none between
    its requests."""
    async with _serving(0.3) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
        for _ in range(8):  # 1.6 s of body, 0.2 s apart
            await asyncio.sleep(0.2)
            writer.write(b"x")
        assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200")
        for _ in range(4):  # idle longer than the deadline between requests
            await asyncio.sleep(0.5)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200")
        writer.close()
        await writer.wait_closed()


class _Recorded:
    """A transport that keeps what is written to it, a write at a time."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def test_an_answers_head_goes_out_with_its_body_in_order() -> None:
    loop = asyncio.get_running_loop()
    recorded = _Recorded()
    transport = _HeadWithBody(recorded, loop)  # type: ignore[arg-type]
    transport.write(b"head;")
    transport.write(b"body")
    transport.write(b"more")
    await asyncio.sleep(0)
    assert recorded.writes == [b"head;body", b"more"]  # one write for head and body
    alone = _Recorded()
    late = _HeadWithBody(alone, loop)  # type: ignore[arg-type]
    late.write(b"head;")
    await asyncio.sleep(0)  # the turn of the loop ends: the head goes out alone
    late.write(b"chunk")
    late.close()
    assert alone.writes == [b"head;", b"chunk"]
    assert alone.closed


async def _stream_late(scope: dict, receive: Any, send: Any) -> None:
    """A stream whose first chunk comes half a second after its head."""
    await receive()
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await asyncio.sleep(0.5)
    await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def test_a_streams_head_is_not_held_for_its_first_chunk() -> None:
    async with _serving(5, _stream_late) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert time.monotonic() - started < 0.3  # the head came at once
        assert b"data: 1" in await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        writer.close()
        await writer.wait_closed()


async def test_an_upgrade_request_reaches_the_app_and_the_server_serves_on() -> None:
    """A websocket upgrade leaves uvicorn's HTTP protocol at once (no request cycle of its
    own, nothing to write through); it reaches the app, which refuses it here (the gateway
    serves no websockets), and plain requests are served as before."""
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close"})
            return
        await _answer_ok(scope, receive, send)

    async with _serving(5, app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        refused = await asyncio.wait_for(reader.read(1024), 5)
        assert refused.startswith(b"HTTP/1.1 403")
        assert seen == ["websocket"]
        writer.close()
        await writer.wait_closed()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"ok"), 5)).startswith(b"HTTP/1.1 200")
        writer.close()
        await writer.wait_closed()
