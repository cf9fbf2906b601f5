"""The server process: the app (``modelyard.api``) under uvicorn, with the timeouts a server
on a shared machine needs. ``modelyard serve`` calls ``serve``; the CLI itself only talks
HTTP. The port listens before the app is imported and started (``modelyard.gate``).

uvicorn bounds how long an idle keep-alive connection stays open, but not how long a client
may take to send a request: a client that sends half a header line and then nothing holds
a connection (and its buffers) forever. ``_Protocol`` closes a connection whose request
headers are not complete ``header_timeout`` seconds after its first byte (or after the
connection opened), and one that goes quiet for as long while sending a body.

On SIGTERM or Ctrl-C, live followers (``follow=true`` on events, activity and logs) end at
once, running requests get ``shutdown_timeout`` seconds to finish; then uvicorn cancels them
(a stream still open ends with an SSE error frame, see ``modelyard.api.dispatch``), and the
lifespan stops every runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import resource
import signal
import socket
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelyard import logbook
from modelyard.config import Config, Settings
from modelyard.gate import ASGIApp, Gate

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)

_OPEN_FILES = 65536
"""Open files asked for when the system sets no hard limit."""


def protocol(header_timeout: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a deadline for receiving each request."""

    class _Protocol(HttpToolsProtocol):
        _deadline = math.inf
        """Loop time by which the request being received must be in (``inf``: none)."""
        _timer: asyncio.TimerHandle | None = None
        """Fires at a deadline, or later: a deadline moved on since leaves it pending rather
        than adding a timer per request (one per connection now and then, at most)."""
        _reading_body = False

        def _arm(self) -> None:
            self._deadline = self.loop.time() + header_timeout
            if self._timer is None:
                self._timer = self.loop.call_at(self._deadline, self._check)

        def _disarm(self) -> None:
            self._deadline = math.inf

        def _check(self) -> None:
            self._timer = None
            if self._deadline == math.inf:
                return
            if self.loop.time() < self._deadline:
                self._timer = self.loop.call_at(self._deadline, self._check)
                return
            self._deadline = math.inf
            self._expired()

        def _expired(self) -> None:
            if self._reading_body and self.flow is not None and self.flow.read_paused:
                self._arm()  # the app is not reading yet: the client is not the slow one
                return
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._reading_body:
                self._arm()
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._deadline == math.inf:
                self._arm()

        def on_headers_complete(self) -> None:
            self._reading_body = True
            self._arm()
            before = self.cycle
            super().on_headers_complete()
            if self.cycle is not before:  # a request (not an upgrade): its task has not run yet
                # Its answer's head goes out with its body (``_HeadWithBody``).
                self.cycle.transport = _HeadWithBody(self.transport, self.loop)  # type: ignore[assignment]

        def on_message_complete(self) -> None:
            self._reading_body = False
            self._disarm()
            super().on_message_complete()

    return _Protocol


class _HeadWithBody:
    """The transport one request's answer is written to. uvicorn writes an answer's head and
    its body apart, two system calls (each wakes the client); here the head waits for the
    body's first write, or for the end of this turn of the event loop (a stream whose first
    chunk is not there yet), and most answers go out in one write. Order is kept: whatever
    is held goes before the next write."""

    __slots__ = ("_held", "_holding", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._holding = True
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._holding:
            self._holding = False
            self._held = data
            self._loop.call_soon(self._flush)
            return
        held = self._held
        if held is not None:
            self._held = None
            data = held + data
        self._transport.write(data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, telling the app when shutdown begins (``app.state.stopping``),
    saying what it waits for, and exiting 0 when asked to stop (uvicorn raises the signal
    again once done, which makes the exit status say "killed"). A second Ctrl-C stops
    waiting: running requests are cut off, the runners are stopped with no grace, and the
    process exits.
    """

    def __init__(self, config: uvicorn.Config, gate: Gate) -> None:
        super().__init__(config)
        self._gate = gate

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            log.warning("second Ctrl-C: exiting now, without waiting for running requests")
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()  # a stop that was asked for is a clean exit

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app: FastAPI | None = self._gate.app  # type: ignore[assignment]
        if app is not None:
            app.state.stopping.set()
        scheduler = getattr(app.state, "scheduler", None) if app is not None else None
        busy = [s for s in scheduler.status() if s.in_flight] if scheduler is not None else []
        if busy:
            what = ", ".join(f"{s.in_flight} on {s.name}" for s in busy)
            log.info(
                "shutting down: waiting up to %.0fs for running requests (%s); Ctrl-C again "
                "to stop now",
                self.config.timeout_graceful_shutdown or 0,
                what,
            )
        await super().shutdown(sockets)
        if self.force_exit:
            # uvicorn leaves the app's shutdown out then; run it, with no grace for the
            # runners, so that they are stopped and nothing is cancelled mid-way at exit.
            if app is not None:
                app.state.stop_now = True
            await self.lifespan.shutdown()


_STARTUP_FAILURE = 3
"""The exit status when the app does not start (uvicorn's)."""


def run(build: Callable[[], ASGIApp], config: Config, **options: Any) -> None:
    """Listens on ``config.host:config.port`` at once, serves the app ``build`` makes (in a
    thread, meanwhile: see ``modelyard.gate``) until SIGTERM or Ctrl-C; exits with status 3
    if the app does not start."""
    server: _Uvicorn | None = None

    def failed() -> None:
        assert server is not None
        server.should_exit = True

    gate = Gate(build, on_failure=failed)
    settings = uvicorn.Config(
        gate,
        host=config.host,
        port=config.port,
        http=protocol(config.header_timeout),
        timeout_graceful_shutdown=max(1, math.ceil(config.shutdown_timeout)),
        log_level=config.log_level,
        log_config=None,  # logging is ours (modelyard.logbook.setup)
        access_log=False,
        **options,
    )
    server = _Uvicorn(settings, gate)
    server.run()
    if gate.failed is not None:
        raise SystemExit(_STARTUP_FAILURE)


def open_files_limit() -> int:
    """Raises this process's limit of open files to what the system allows it (each stream
    holds two connections, and a shell's default of 1,024 runs out near 500 streams); the
    limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, _OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d: %s", soft, exc)
    return soft


def serve(config: Config, settings: Settings) -> None:
    """Logs as configured and serves ``config`` (reloadable from ``settings``)."""
    logbook.setup(
        config.log_level,
        config.log_format,
        config.home / "logs",
        logbook.Rotation(config.log_max_size, config.log_files),
    )
    open_files_limit()

    def build() -> ASGIApp:
        from modelyard.api.app import create_app  # imported while the port already listens

        return create_app(config, settings=settings)

    run(build, config)
