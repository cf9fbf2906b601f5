"""The serving path: one ASGI response that reserves the charge, takes a lease, forwards,
relays, releases and settles.

Routes parse and shape; ``Dispatch`` does the rest inside its own ``__call__``, so the lease
and the charge live in exactly one ``try/finally`` that runs however the exchange ends:
answered, upstream failure, the client leaving while queued, while the model loads, before
or after the first streamed byte, or the task being cancelled at shutdown.

The order of a request:
0. With accounts: reserve the caller's charge (``Bill``: rate limits, the worst case on the
   balances); refused, nothing else happens.
1. ``acquire`` the model's lease (queue, load, evict); the client leaving cancels the wait.
2. POST the payload to the runner with its key. A runner that refuses the connection or
   drops it before taking the request is dead or dying: the lease is returned, the
   scheduler confirms the exit, and the request waits for the restart like a request to a
   cold model, through as many restarts as come within the model's queue timeout (a kill
   storm). One that is still running after all is tried again, ``_ATTEMPTS`` times at most.
3. Relay: a stream chunk by chunk as it comes (a broken upstream ends with one SSE error
   frame), or the whole answer, shaped by the route's ``shape``. A llama.cpp answer the
   client wants whole is asked as a stream and gathered (``api.gather``); the client has
   seen nothing of it until it ends, so a runner that dies meanwhile is waited for like in 2.
4. Release, telling the scheduler whether the runner served the request, and settle the
   charge at the tokens the engine reported (what a client who left had made it generate).

Along the way the request's ``Trace`` (``modelyard.api.telemetry``) gets the waits, the time
to the runner's answer and to the first chunk, and the tokens the engine reported; the
response carries them as ``Server-Timing``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from modelyard.accounts.service import Bill
from modelyard.api.errors import error_response, report, shown_to, sse_error_frame
from modelyard.api.gather import Gathering
from modelyard.api.length import Length
from modelyard.api.proxy import UPSTREAM_ERRORS, Upstream, read_answer
from modelyard.api.tally import Tally
from modelyard.api.telemetry import Trace
from modelyard.api.wire import Answer
from modelyard.dialect.base import Dialect, engine_error, sse_events, stream_chunks
from modelyard.engines import engine_of
from modelyard.errors import (
    ModelyardError,
    RunnerError,
    RunnerUnreachableError,
    ShuttingDownError,
)
from modelyard.scheduler import Lease, Scheduler, Unset

log = logging.getLogger(__name__)

Shape = Callable[[bytes], bytes]

_CLIENT_CLOSED = 499  # nginx's convention; nobody reads it, the client is gone
_WATCH_AFTER = 0.005
"""Seconds a request runs before its client is watched for leaving (``_Watch``)."""
_ATTEMPTS = 3
"""Tries of one request on runners that are alive but drop its connection."""
_RESTARTS_FOR = 120.0
"""Seconds a request waits through restarts of runners that died under it, for a model
without a queue timeout (else that timeout: as long as it could have waited in the queue)."""
_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_USAGE_BYTES = 65536
"""The most of a stream's final chunks kept to read its usage from."""
_DRAIN = 0.05
"""Seconds between reads of a stream gathered into a whole answer (``Dispatch._gather``):
often enough that the engine never waits on a full buffer (128 KiB), rarely enough that a
fast engine's tokens are read in batches."""
_FINAL_SEND = 1.0
"""Seconds a last message (an error frame at shutdown) may take to go out."""


class _Watch:
    """Notices the client leaving (``http.disconnect``) and then cancels the request's own
    task while it is ``armed``: whatever it waits for (the queue, a load, the answer, the next
    chunk) ends at once, with no task per step. ``left`` tells that cancellation apart from
    a shutdown's.

    It starts watching only once the request has taken ``_WATCH_AFTER``: most answers of a
    loaded model are over before, and a request that ends sooner spares the watcher's task
    (its start, its wait and its cancellation: two turns of the event loop). A client gone
    earlier is noticed as the watch starts."""

    def __init__(self, receive: Receive) -> None:
        self.left = False
        self.armed = True
        self._task = asyncio.current_task()
        self._receive = receive
        self._watcher: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            _WATCH_AFTER, self._start
        )

    def _start(self) -> None:
        self._timer = None
        self._watcher = asyncio.ensure_future(self._disconnected(self._receive))

    async def _disconnected(self, receive: Receive) -> None:
        # The route has read the whole body: what comes now is the disconnect.
        while (await receive())["type"] != "http.disconnect":
            pass
        self.left = True
        if self.armed and self._task is not None:
            self._task.cancel()

    def close(self) -> None:
        self.armed = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watcher is not None:
            self._watcher.cancel()


class Dispatch(Response):
    """Serves one validated request through ``scheduler`` and ``upstream`` (see the module)."""

    def __init__(
        self,
        scheduler: Scheduler,
        upstream: Upstream,
        *,
        model: str,
        keep_alive: float | Unset | None,
        path: str,
        payload: dict[str, Any],
        request_id: str,
        trace: Trace | None = None,
        shape: Shape | None = None,
        bill: Bill | None = None,
        strip_usage: bool = False,
        client: str = "",
        weight: float = 1.0,
        dialect: Dialect | None = None,
        length: Length | None = None,
        gathered: bool = False,
    ) -> None:
        super().__init__()
        self._scheduler = scheduler
        self._upstream = upstream
        self._model = model
        self._keep_alive = keep_alive
        self._path = path
        self._payload = payload
        self._request_id = request_id
        self._shape = shape
        self._bill = bill
        """Reserved before the request is served, settled once it is over."""
        self._client = client
        self._weight = weight
        self._strip_usage = strip_usage
        """The stream's usage event was asked for by us, not the client: leave it out."""
        self._dialect = dialect
        """Another API (or shape) spoken over this request (``modelyard.dialect``)."""
        self._gathered = gathered
        """The engine streams an answer the client asked for whole (``api.gather``)."""
        self._stream = bool(payload.get("stream")) and not gathered
        self._tally = Tally(length.prompts, length.prompt) if length is not None else Tally()
        self._relays = engine_of(scheduler.spec(model)).relays
        self._trace = trace or Trace(request_id, "POST", path, time.perf_counter(), time.time())
        self._trace.model = model
        self._trace.stream = self._stream
        self._started = False
        self._finished = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = _Watch(receive)
        trace = self._trace
        lease: Lease | None = None
        upstream: Answer | None = None
        served = False
        try:
            limits: list[tuple[bytes, bytes]] = []
            if self._bill is not None:
                trace.charge = await self._bill.reserve()
                limits = [
                    (k.encode(), v.encode()) for k, v in trace.charge.admission.headers.items()
                ]
            lease, upstream, gathered = await self._open()
            trace.ttfb = time.perf_counter() - trace.started
            if self._dialect is not None:
                self._dialect.load_wait = lease.load_wait
            headers = [
                (b"x-modelyard-queue-ms", f"{lease.queued * 1000:.1f}".encode()),
                (b"server-timing", trace.server_timing()),
                *limits,
            ]
            if self._stream and upstream.status < 400:
                stream_headers = _STREAM_HEADERS
                if self._dialect is not None:
                    stream_headers = [
                        (b"content-type", self._dialect.media_type),
                        *_STREAM_HEADERS[1:],
                    ]
                await self._start(send, 200, [*stream_headers, *headers])
                served = await self._relay(upstream, send)
            else:
                if gathered is not None:
                    answer = gathered  # its usage and timings are on the trace already
                    watch.armed = False
                else:
                    answer = await read_answer(upstream, passthrough=self._relays)
                    watch.armed = False
                    trace.read_usage(answer)
                if self._shape is not None:
                    answer = self._shape(answer)
                if self._dialect is not None:
                    answer = self._dialect.answer(answer)
                await self._answer(send, 200, answer, headers)
                served = True
        except ModelyardError as exc:
            watch.armed = False
            report(exc)
            served = exc.status < 500
            await self._fail(send, shown_to(scope, exc))
        except asyncio.CancelledError:
            watch.close()
            trace.cancelled = True
            if watch.left:
                # Our own cancellation: the client is gone, nobody reads an answer.
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
                if not self._started:
                    await self._answer(send, _CLIENT_CLOSED, b"", [])
                return
            # Else only shutdown cancels a request (uvicorn, once shutdown_timeout has
            # passed): end it in a way the client can read. Ended so, it is over, not broken.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._fail(send, ShuttingDownError("The server is shutting down")),
                    _FINAL_SEND,
                )
            if not self._finished:
                raise
        finally:
            watch.close()
            if upstream is not None:
                upstream.close()  # left unread (the client went first): the engine stops
            if lease is not None:
                self._scheduler.release(lease, served=served)
            if self._bill is not None and trace.charge is not None:
                tokens = trace.prompt_tokens + trace.completion_tokens
                self._bill.settle(trace.charge, tokens, self._request_id)

    async def _open(self) -> tuple[Lease, Answer, bytes | None]:
        """A lease and the runner's response (its headers; the body is still to come), and
        the whole answer when it is gathered from a stream: a runner that dies while one is
        gathered has sent the client nothing yet, so the request waits for its restart and
        is asked again, once (charged what that answer generated)."""
        refused = broken = 0
        waited = self._scheduler.spec(self._model).queue_timeout
        deadline = self._trace.started + (waited if waited is not None else _RESTARTS_FOR)
        while True:
            # If the client leaves while this waits, acquire returns the lease it granted.
            lease = await self._scheduler.acquire(
                self._model,
                self._keep_alive,
                request=self._request_id,
                client=self._client,
                weight=self._weight,
            )
            trace = self._trace
            trace.lease_at = time.perf_counter() - trace.started
            trace.load_wait = lease.load_wait
            trace.queue_wait = max(0.0, lease.queued - lease.load_wait)
            try:
                response = await self._upstream.post(
                    lease.base_url + self._path,
                    self._payload,
                    {**lease.headers, "X-Request-Id": self._request_id},
                )
                if not (self._gathered and response.status < 400):
                    return lease, response, None
                return lease, response, await self._gather(response)
            except _StreamBroken as exc:
                self._scheduler.release(lease)
                broken += 1
                # Asked again once only: a request that makes the engine crash would else
                # crash it for everyone, again and again.
                if broken > 1 or time.perf_counter() > deadline:
                    raise RunnerError(exc.message) from None
                if not await self._scheduler.runner_unreachable(lease):
                    raise RunnerError(exc.message) from None
                self._tally.reset()
                log.info(
                    "runner of %s died while answering request %s whole; it waits for the restart",
                    self._model,
                    self._request_id,
                )
            except RunnerUnreachableError as exc:
                self._scheduler.release(lease)
                if self._relays:  # no process to wait for: it is down or out of reach
                    raise RunnerUnreachableError(
                        f"remote model {self._model!r} at {lease.base_url} did not answer: "
                        f"{exc.message}"
                    ) from None
                gone = await self._scheduler.runner_unreachable(lease)
                refused += not gone
                if refused == _ATTEMPTS or time.perf_counter() > deadline:
                    raise
                if gone:
                    log.info(
                        "runner of %s is gone; request %s waits for its restart",
                        self._model,
                        self._request_id,
                    )
                else:
                    # Alive, but it closed the connection before taking the request (seen
                    # once under a kill storm): another try, on a new connection.
                    log.info(
                        "runner of %s closed request %s's connection; trying again",
                        self._model,
                        self._request_id,
                    )
            except BaseException:
                self._scheduler.release(lease)
                raise

    async def _relay(self, upstream: Answer, send: Send) -> bool:
        """Passes the stream on as it arrives; ``True`` if it ended as the runner meant it.
        However it ends, the trace gets the tokens the engine said it used (``Tally``)."""
        complete = False
        tail = b""
        trace = self._trace
        tally = self._tally
        held = b""
        dialect = self._dialect
        try:
            async for chunk in upstream.chunks():
                if trace.ttft is None:
                    trace.ttft = time.perf_counter() - trace.started
                tally.feed(chunk)
                failure = None
                if dialect is not None:
                    chunk, held, failure = _translated(dialect, held + chunk)
                elif self._strip_usage:
                    chunk, held = _without_usage(held + chunk)
                if chunk:
                    tail = chunk[-2:]
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if failure is not None:
                    raise _EngineFailed(failure)
            if held and dialect is None:
                await send({"type": "http.response.body", "body": held, "more_body": True})
            complete = True
        except (TimeoutError, *UPSTREAM_ERRORS, _EngineFailed) as exc:
            # Terminate a half-written event first so the error frame parses on its own.
            prefix = b"" if tail in (b"", b"\n\n") else b"\n\n"
            error = RunnerError(f"model server failed while streaming: {exc}")
            report(error)
            if dialect is not None:
                await self._finish(send, dialect.stream_error(error))
            else:
                await self._finish(send, prefix + sse_error_frame(error))
            return False
        finally:
            if complete:
                upstream.release()
            else:
                upstream.close()
            trace.prompt_tokens, trace.completion_tokens = tally.tokens()
        await self._finish(send, dialect.close() if dialect is not None else b"")
        return True

    async def _gather(self, upstream: Answer) -> bytes:
        """The whole answer of a stream asked for a client who wants it whole
        (``api.gather``). What came is read every ``_DRAIN`` seconds and at the end, not
        at each token (the task wakes once for a short answer); a client who leaves is
        charged what had come, and closing the connection stops the engine."""
        if upstream.content_type != "text/event-stream":
            whole = await read_answer(upstream)  # it answered whole all the same
            self._trace.read_usage(whole)
            return whole
        gathering = Gathering(self._tally)
        complete = False
        try:
            while not upstream.is_eof():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_DRAIN):
                        await upstream.wait_eof()
                gathering.feed(upstream.take())
            gathering.feed(upstream.take())
            complete = True
        except UPSTREAM_ERRORS as exc:
            raise _StreamBroken(f"model server failed while answering: {exc}") from exc
        except asyncio.CancelledError:
            with contextlib.suppress(RunnerError, *UPSTREAM_ERRORS):
                gathering.feed(upstream.take())  # counted, though nobody reads it
            raise
        finally:
            if complete:
                upstream.release()
            else:
                upstream.close()
            self._trace.prompt_tokens, self._trace.completion_tokens = self._tally.tokens()
        self._trace.read_timings(gathering.timings)
        return gathering.answer()

    async def _start(self, send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._started = True
        await send({"type": "http.response.start", "status": status, "headers": headers})

    async def _finish(self, send: Send, body: bytes) -> None:
        self._finished = True
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _answer(
        self, send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        await self._start(
            send,
            status,
            [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        )
        await self._finish(send, body)

    async def _fail(self, send: Send, exc: ModelyardError) -> None:
        """An error response, or one SSE error frame once a stream has started."""
        if self._finished:
            return
        dialect = self._dialect
        if self._started:
            frame = dialect.stream_error(exc) if dialect is not None else sse_error_frame(exc)
            await self._finish(send, frame)
            return
        response = error_response(exc, dialect.envelope if dialect is not None else None)
        await self._start(send, response.status_code, response.raw_headers)
        await self._finish(send, bytes(response.body))


def _without_usage(data: bytes) -> tuple[bytes, bytes]:
    """``data``'s complete events but a usage-only one (no choices), and the rest of an event
    still to come."""
    end = data.rfind(b"\n\n")
    if end < 0:
        return b"", data
    complete, rest = data[: end + 2], data[end + 2 :]
    if b'"usage"' in complete:
        events = complete.split(b"\n\n")
        complete = b"\n\n".join(e for e in events if not _usage_only(e))
    return complete, rest


def _usage_only(event: bytes) -> bool:
    if b'"usage"' not in event or not event.startswith(b"data: "):
        return False
    try:
        data = json.loads(event[6:])
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("choices") == [] and "usage" in data


def _translated(dialect: Dialect, data: bytes) -> tuple[bytes, bytes, str | None]:
    """``data``'s complete events in ``dialect``, the rest of an event still to come, and the
    message of an error event the engine sent instead of its next chunk."""
    events, rest = sse_events(data)
    out: list[bytes] = []
    for chunk in stream_chunks(events):
        failure = engine_error(chunk)
        if failure is not None:
            return b"".join(out), rest, failure
        out.append(dialect.feed(chunk))
    return b"".join(out), rest, None


class _StreamBroken(RunnerError):
    """The connection of a stream gathered into a whole answer broke (``Dispatch._gather``)."""


class _EngineFailed(Exception):
    """The engine ended a stream with an error event (a dialect reports it in its own way)."""
