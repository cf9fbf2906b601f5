"""The runners' HTTP client, against real sockets: answers framed every way HTTP frames
them, connections kept and not kept, a runner that breaks off, and a slow reader; each on
asyncio's loop and on uvloop's, which the server runs on (``conftest``)."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from modelyard.api.wire import Broken, Pool, Unanswered

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A TCP server that answers each request with ``script``; it counts connections."""

    def __init__(self, script: Script, tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.connections = 0
        self.closed = 0
        self.requests: list[bytes] = []
        self.url = ""

    async def __aenter__(self) -> Server:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    self.requests.append(head + await reader.readexactly(length))
                    await self.script(reader, writer)
                    if writer.is_closing():
                        return
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                self.closed += 1
                writer.close()

        self._server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=self.tls)
        port = self._server.sockets[0].getsockname()[1]
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://127.0.0.1:{port}/v1/chat/completions"
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.close()


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    pool = Pool(connect_timeout=2.0, keepalive=4.0)
    yield pool
    await pool.close()


def _whole(body: bytes, extra: bytes = b"") -> Script:
    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)
        )
        await writer.drain()

    return script


async def test_wire_posts_and_keeps_the_connection(pool: Pool) -> None:
    async with Server(_whole(b'{"ok": true}', b"Retry-After: 3\r\n")) as server:
        for _ in range(3):
            answer = await pool.post(server.url, {"X-Request-Id": "r1"}, b'{"a": 1}')
            assert answer.status == 200
            assert answer.content_type == "application/json"
            assert answer.headers["retry-after"] == "3"
            assert await answer.read() == b'{"ok": true}'
            answer.release()
            answer.close()  # once released, the connection is the pool's: left open
        assert server.connections == 1
        head, _, body = server.requests[0].partition(b"\r\n\r\n")
        assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
        assert b"\r\nX-Request-Id: r1\r\n" in head
        assert b"\r\nHost: 127.0.0.1:" in head
        assert body == b'{"a": 1}'


async def test_wire_closes_connections_left_idle_after_a_burst() -> None:
    """Steady traffic after a burst reuses one connection; the burst's others are closed
    once idle longer than ``keepalive``, not kept open for ever."""
    pool = Pool(connect_timeout=2.0, keepalive=0.2)
    try:
        async with Server(_whole(b"{}")) as server:
            burst = await asyncio.gather(*(pool.post(server.url, {}, b"{}") for _ in range(3)))
            for answer in burst:
                await answer.read()
                answer.release()
            assert server.connections == 3
            for _ in range(6):
                answer = await pool.post(server.url, {}, b"{}")
                await answer.read()
                answer.release()
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.05)
            assert (server.connections, server.closed) == (3, 2)
    finally:
        await pool.close()


async def test_wire_streams_chunks_as_they_come(pool: Pool) -> None:
    async def chunked(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for event in (b"data: 1\n\n", b"data: 2\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with Server(chunked) as server:
        answer = await pool.post(server.url, {}, b"{}")
        assert answer.content_type == "text/event-stream"
        got = [chunk async for chunk in answer.chunks()]
        assert got == [b"data: 1\n\n", b"data: 2\n\n"]  # one at a time, as sent
        answer.release()
        again = await pool.post(server.url, {}, b"{}")
        assert b"".join([c async for c in again.chunks()]) == b"data: 1\n\ndata: 2\n\n"
        again.release()
        assert server.connections == 1


def _then_hang_up(raw: bytes) -> Script:
    """Sends ``raw`` and closes the connection."""

    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        await writer.drain()
        writer.close()

    return script


async def test_wire_reads_an_answer_that_ends_with_the_connection(pool: Pool) -> None:
    until_close = _then_hang_up(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
    async with Server(until_close) as server:
        answer = await pool.post(server.url, {}, b"{}")
        assert await answer.read() == b"all of it"
        answer.release()
        second = await pool.post(server.url, {}, b"{}")  # a new connection
        assert await second.read() == b"all of it"
        assert server.connections == 2


async def test_wire_a_runner_that_takes_no_request_is_unanswered(pool: Pool) -> None:
    async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with Server(hang_up) as server:
        with pytest.raises(Unanswered):
            await pool.post(server.url, {}, b"{}")
    with pytest.raises(Unanswered, match="cannot connect"):
        await pool.post(server.url, {}, b"{}")  # nobody listens any more


async def test_wire_a_runner_that_breaks_off_mid_answer(pool: Pool) -> None:
    break_off = _then_hang_up(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
    async with Server(break_off) as server:
        answer = await pool.post(server.url, {}, b"{}")
        with pytest.raises(Broken):
            await answer.read()
        streamed = await pool.post(server.url, {}, b"{}")
        chunks = streamed.chunks()
        assert await chunks.__anext__() == b"only this"  # what came first is still read
        with pytest.raises(Broken):
            await chunks.__anext__()


async def test_wire_severing_a_runner_ends_its_answers_at_once(pool: Pool) -> None:
    """A runner on a node cut off from the gateway sends nothing more and never closes:
    severing it fails the answers being read, and only those."""

    async def stalls(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await asyncio.sleep(30)

    async with Server(stalls) as cut, Server(stalls) as other:
        answers = [await pool.post(cut.url, {}, b"{}") for _ in range(2)]
        spared = await pool.post(other.url, {}, b"{}")
        streams = [answer.chunks() for answer in (*answers, spared)]
        for stream in streams:
            assert await stream.__anext__() == b"first"
        host, port = cut.url.split("/")[2].split(":")
        assert pool.sever(host, int(port)) == 2
        for stream in streams[:2]:
            with pytest.raises(Broken):
                await asyncio.wait_for(stream.__anext__(), 1)
        waiting = asyncio.ensure_future(streams[2].__anext__())
        await asyncio.sleep(0.1)
        assert not waiting.done()  # the other runner's answer goes on
        waiting.cancel()
        spared.close()


async def test_wire_closing_an_answer_early_closes_its_connection(pool: Pool) -> None:
    left = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            while True:
                writer.write(b"5\r\ntoken\r\n")
                await writer.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            left.set()
            raise

    async with Server(endless) as server:
        answer = await pool.post(server.url, {}, b"{}")
        async for _ in answer.chunks():
            break
        answer.close()
        await asyncio.wait_for(left.wait(), 5)  # the runner learns it and stops


async def test_wire_a_slow_stream_reader_holds_the_runner_back(pool: Pool) -> None:
    """Reading stops while a stream's reader lags (memory stays bounded); an answer read
    whole is read however large."""
    written = 0
    size = 64 << 20

    async def flood(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal written
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"x" * (1 << 16)
        while written < size:
            writer.write(block)
            written += len(block)
            await writer.drain()

    async with Server(flood) as server:
        answer = await pool.post(server.url, {}, b"{}")
        stream = answer.chunks()
        first = await stream.__anext__()
        await asyncio.sleep(0.5)
        assert written < size // 4  # held back: the reader took one chunk only
        total = len(first) + sum([len(chunk) async for chunk in stream])
        assert total == size
        answer.release()
        written = 0
        whole = await pool.post(server.url, {}, b"{}")
        assert len(await whole.read()) == size


async def test_wire_refuses_a_header_with_a_line_break(pool: Pool) -> None:
    async with Server(_whole(b"{}")) as server:
        with pytest.raises(ValueError, match="line break"):
            await pool.post(server.url, {"X-Request-Id": "a\r\nX-Evil: 1"}, b"{}")
        assert server.requests == []


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, and its key."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_wire_speaks_tls_to_an_https_server_it_can_verify(
    certificate: tuple[Path, Path],
) -> None:
    """A remote model behind https: verified against the authorities the pool trusts (here
    a self-signed certificate for 127.0.0.1); one it cannot verify is never sent the
    request."""
    cert, key = certificate
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    trusting = Pool(connect_timeout=2.0, keepalive=4.0, tls=ssl.create_default_context(cafile=cert))
    default = Pool(connect_timeout=2.0, keepalive=4.0)
    try:
        async with Server(_whole(b'{"ok": true}'), tls=served) as server:
            assert server.url.startswith("https://")
            for _ in range(2):
                answer = await trusting.post(server.url, {}, b"{}")
                assert await answer.read() == b'{"ok": true}'
                answer.release()
            assert server.connections == 1
            with pytest.raises(Unanswered, match="CERTIFICATE_VERIFY_FAILED"):
                await default.post(server.url, {}, b"{}")
            assert len(server.requests) == 2
    finally:
        await trusting.close()
        await default.close()
