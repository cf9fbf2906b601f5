"""Plain HTTP/1.1 to the runners, on pooled keep-alive connections.

Every request a client sends to a model is posted once more to its runner, so the cost of
that post is paid on every request: aiohttp's client spent ~450 µs of CPU on one (its
general machinery: URL objects, cookie jars, header multidicts, a task to write the body),
this ~120 µs. It does what the gateway needs of a runner and nothing else: a POST with a
body whose length is known, an answer framed by ``Content-Length``, chunked encoding or the
connection's end (``httptools`` parses it), read whole or as it comes, with the reading
paused while a stream's client is slower than the runner; over TLS for an ``https`` server
(a remote model), verified as any client would.

A connection goes back to its pool only after an answer read to its end that lets it stay
open; one idle longer than ``keepalive`` is closed rather than reused (llama.cpp closes its
own after 5 s). Closing an answer before its end closes its connection: that is how a
runner learns that the client left, and stops generating.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import ssl
import time
from typing import cast
from urllib.parse import unquote, urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

_HIGH_WATER = 1 << 20
"""Bytes of a stream held unread before the connection stops reading (an answer read whole
is read however large)."""


class WireError(Exception):
    """The runner's connection failed."""


class Unanswered(WireError):
    """It failed before any of the answer came: the runner did not take the request (refused,
    reset, or a pooled connection it had closed), so the request may be sent again."""


class Broken(WireError):
    """It broke while the answer came."""


class Answer:
    """A runner's answer: its status and headers at once, its body as it comes."""

    def __init__(self, connection: _Connection, status: int, headers: CIMultiDict[str]) -> None:
        self._connection = connection
        self.status = status
        self.headers = CIMultiDictProxy(headers)
        self.content_type = headers.get("Content-Type", "").partition(";")[0].strip().lower()
        self._over = False

    def is_eof(self) -> bool:
        """The body has all come (what is left to take is in ``take``)."""
        return self._connection.complete

    async def wait_eof(self) -> None:
        await self._connection.wait(until_complete=True)

    def take(self) -> bytes:
        """What has come and was not taken yet (raises ``Broken`` once the connection broke
        and everything that came before was taken)."""
        return self._connection.take()

    async def chunks(self) -> collections.abc.AsyncIterator[bytes]:
        """The body as it comes."""
        connection = self._connection
        while True:
            await connection.wait(until_complete=False)
            data = connection.take()
            if data:
                yield data
            elif connection.complete:
                return

    async def read(self) -> bytes:
        """The whole body (``Broken`` if it did not all come)."""
        await self.wait_eof()
        return self._connection.take(whole=True)

    def release(self) -> None:
        """Done with it: the connection goes back to the pool when it may, else closes."""
        if not self._over:
            self._over = True
            self._connection.done()

    def close(self) -> None:
        """Done with it before its end: the connection closes. Once released or closed, an
        answer lets its connection be (another request may have it by then)."""
        if not self._over:
            self._over = True
            self._connection.close()


class _Connection(asyncio.Protocol):
    """One keep-alive connection to a runner, and the answer it is reading."""

    def __init__(self, pool: Pool, key: tuple[str, int, bool]) -> None:
        self._pool = pool
        self.key = key
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._head: asyncio.Future[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._body: list[bytes] = []
        self._held = 0
        self._paused = False
        self._whole = False
        """The answer is read whole: never paused."""
        self._framed = False
        """The answer says where it ends (a length, or chunks); else it ends with the
        connection."""
        self.complete = False
        self._reusable = False
        """The answer ended and the connection may carry the next request."""
        self._failure: WireError | None = None
        self._answered = False
        """Some of the answer came."""
        self.idle_since = 0.0

    # ---- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(Broken(f"the runner's answer is not HTTP: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close the connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._pool.forget(self)
        if self.complete:
            return
        if self._head is not None and self._head.done() and not self._framed:
            self._finish()  # its body ended with the connection, as it said it would
            return
        reason = f": {exc}" if exc else ""
        if self._answered:
            self._fail(Broken(f"the runner closed the connection mid-answer{reason}"))
        else:
            self._fail(Unanswered(f"the runner closed the connection{reason}"))

    # ---- httptools callbacks ------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        headers = self._headers
        self._framed = (
            "Content-Length" in headers or "chunked" in headers.get("Transfer-Encoding", "").lower()
        )
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        if self._whole:
            return  # its reader waits for the end, not for each piece
        self._held += len(body)
        if self._held > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._reusable = self._parser.should_keep_alive()  # told only until this returns
        self._finish()

    # ---- the request --------------------------------------------------------------------

    async def ask(self, head: bytes, body: bytes) -> Answer:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise Unanswered("the connection is closed")
        self._head = asyncio.get_running_loop().create_future()
        transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            transport.write(body)
        try:
            await self._head
        except BaseException:
            self.close()
            raise
        return Answer(self, self._parser.get_status_code(), self._headers)

    def take(self, *, whole: bool = False) -> bytes:
        """What came; ``whole``: all of it or ``Broken``."""
        body = self._body
        if self._failure is not None and (whole or not body):
            raise self._failure
        if not body:
            return b""
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self._held = 0
        self._resume()
        return data

    def _resume(self) -> None:
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    async def wait(self, *, until_complete: bool) -> None:
        """Until the answer is complete (or broke), or, without ``until_complete``, until
        some of its body is there to take."""
        if until_complete and not self._whole:
            self._whole = True
            self._resume()
        while not (self.complete or self._failure is not None):
            if self._body and not until_complete:
                return
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None

    def done(self) -> None:
        if self.complete and self._reusable and not self._body:
            self._pool.keep(self)
        else:
            self.close()

    def close(self) -> None:
        self._body.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._pool.forget(self)

    def abort(self) -> None:
        """Drops the connection at once (its answer, if one is being read, fails)."""
        if self._transport is not None:
            self._transport.abort()  # connection_lost follows, on the next turn of the loop

    def reset(self) -> None:
        """Ready for the next request on the same connection."""
        self._parser = httptools.HttpResponseParser(self)
        self._headers = CIMultiDict()
        self._head = None
        self._body = []
        self._held = 0
        self._whole = False
        self.complete = False
        self._reusable = False
        self._answered = False
        self._framed = False

    def _finish(self) -> None:
        self.complete = True
        self._wake()

    def _fail(self, failure: WireError) -> None:
        self._failure = failure
        if self._head is not None and not self._head.done():
            self._head.set_exception(failure)
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)


class Pool:
    """Connections to runners, kept open between requests (see the module)."""

    def __init__(
        self, *, connect_timeout: float, keepalive: float, tls: ssl.SSLContext | None = None
    ) -> None:
        """``tls``: how ``https`` servers are verified (by default, as any client does:
        the system's certificate authorities and the server's name)."""
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._idle: dict[tuple[str, int, bool], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._heads: dict[str, tuple[tuple[str, int, bool], bytes]] = {}
        """URL → ((host, port, TLS), the start of its request head); a gateway posts to
        few URLs."""
        self._tls = tls

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Answer:
        """``body`` posted to ``url`` (``http`` only); ``Unanswered`` or ``Broken`` when the
        connection fails."""
        key, start = self._head_of(url)
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        if lines.count("\n") != len(headers) or lines.count("\r") != len(headers):
            raise ValueError("a header holds a line break")
        head = b"%s%sContent-Length: %d\r\n\r\n" % (start, lines.encode("latin-1"), len(body))
        connection = self._idle_connection(key) or await self._connect(key)
        return await connection.ask(head, body)

    def keep(self, connection: _Connection) -> None:
        if connection not in self._open:
            return
        connection.reset()
        now = connection.idle_since = time.monotonic()
        idle = self._idle.setdefault(connection.key, [])
        while idle and now - idle[0].idle_since >= self._keepalive:
            idle[0].close()  # the oldest, left over from a burst: not kept open for ever
        idle.append(connection)

    def forget(self, connection: _Connection) -> None:
        self._open.discard(connection)
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    async def close(self) -> None:
        for connection in list(self._open):
            connection.close()

    def sever(self, host: str, port: int) -> int:
        """Aborts every connection to ``host:port`` (a runner on a node that is lost, whose
        connections would otherwise wait for TCP to give up): answers being read fail at
        once. How many there were."""
        severed = [c for c in self._open if c.key[:2] == (host, port)]
        for connection in severed:
            connection.abort()
        return len(severed)

    def _head_of(self, url: str) -> tuple[tuple[str, int, bool], bytes]:
        found = self._heads.get(url)
        if found is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an HTTP URL: {url!r}")
            tls = parts.scheme == "https"
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            host = parts.netloc.rpartition("@")[2]
            start = f"POST {target} HTTP/1.1\r\nHost: {host}\r\n"
            if parts.username is not None:
                secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
                start += f"Authorization: Basic {base64.b64encode(secret.encode()).decode()}\r\n"
            found = ((parts.hostname, parts.port or (443 if tls else 80), tls), start.encode())
            if len(self._heads) > 1000:
                self._heads.clear()
            self._heads[url] = found
        return found

    def _idle_connection(self, key: tuple[str, int, bool]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recent: the least likely to be closed
            if now - connection.idle_since < self._keepalive:
                return connection
            connection.close()
        return None

    async def _connect(self, key: tuple[str, int, bool]) -> _Connection:
        loop = asyncio.get_running_loop()
        host, port, tls = key
        if tls and self._tls is None:
            self._tls = ssl.create_default_context()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self, key),
                    host,
                    port,
                    ssl=self._tls if tls else None,
                    server_hostname=host if tls else None,
                )
        except (OSError, TimeoutError) as exc:
            raise Unanswered(f"cannot connect to {host}:{port}: {exc}") from exc
        self._open.add(connection)
        return connection
