"""What each model request did, measured once and told three ways: metrics, the activity
list (``GET /api/activity``) and the access log.

``Observe`` (ASGI middleware) gives every request to a model route a ``Trace`` at arrival;
the route names the model and ``Dispatch`` fills in the waits, the time to the runner's
answer and to the first token, and the tokens the engine reported. When the response has
ended, ``Telemetry.finish`` hands the trace on.

The access log line names the model, status, tokens and times, and the request id; never
the prompt or the answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard import logbook
from modelyard.accounts.identity import Principal
from modelyard.accounts.service import Accounts, Charge, Usage
from modelyard.api.metrics import Metrics
from modelyard.feed import Feed
from modelyard.scheduler import Scheduler

log = logging.getLogger(__name__)
access_log = logging.getLogger("modelyard.access")

_decoder = json.JSONDecoder()


@dataclass(slots=True)
class Trace:
    request_id: str
    method: str
    route: str
    started: float
    """``time.perf_counter()`` at arrival."""
    wall: float
    """``time.time()`` at arrival."""
    model: str = ""
    """The catalog name, once the route resolved it."""
    stream: bool = False
    status: int = 0
    lease_at: float | None = None
    """Seconds from arrival to the lease (``None``: it never got one)."""
    queue_wait: float = 0.0
    load_wait: float = 0.0
    ttfb: float | None = None
    """Seconds from arrival to the runner's response headers."""
    ttft: float | None = None
    total: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    engine_tpot: float | None = None
    """The engine's own time per generated token (non-streamed answers)."""
    cancelled: bool = False
    principal: Principal | None = None
    """Whom it was served for (``None``: refused before it was known)."""
    charge: Charge | None = None
    """Its rate-limit place and balance reservation, once admitted."""
    price: float = 1.0

    @property
    def tpot(self) -> float | None:
        """Seconds per generated token after the first."""
        if self.engine_tpot is not None:
            return self.engine_tpot
        if self.ttft is not None and self.completion_tokens > 1:
            return max(0.0, self.total - self.ttft) / (self.completion_tokens - 1)
        return None

    def read_usage(self, body: bytes) -> None:
        """Tokens (and, from llama.cpp's ``timings``, its prompt time and time per token)
        from an answer or the last chunks of a stream; anything unreadable is skipped."""
        usage = _object_after(body, b'"usage"')
        timings = _object_after(body, b'"timings"')
        if usage is not None:
            self.prompt_tokens = _int(usage.get("prompt_tokens"))
            self.completion_tokens = _int(usage.get("completion_tokens"))
        elif timings is not None:
            self.prompt_tokens = _int(timings.get("prompt_n"))
            self.completion_tokens = _int(timings.get("predicted_n"))
        self.read_timings(timings)

    def read_timings(self, timings: object) -> None:
        """llama.cpp's prompt time and time per token, of an answer given whole."""
        if isinstance(timings, dict) and not self.stream:
            prompt_ms = timings.get("prompt_ms")
            per_token = timings.get("predicted_per_token_ms")
            if isinstance(prompt_ms, int | float) and self.lease_at is not None:
                self.ttft = self.lease_at + prompt_ms / 1000
            if isinstance(per_token, int | float) and self.completion_tokens > 1:
                self.engine_tpot = per_token / 1000

    def server_timing(self) -> bytes:
        """The ``Server-Timing`` header: queue, load and time to the runner's first byte."""
        parts = [f"queue;dur={self.queue_wait * 1000:.1f}", f"load;dur={self.load_wait * 1000:.1f}"]
        if self.ttfb is not None:
            parts.append(f"ttfb;dur={self.ttfb * 1000:.1f}")
        return ", ".join(parts).encode()

    def access_line(self) -> str:
        cancelled = " cancelled" if self.cancelled else ""
        return (
            f"{self.method} {self.route} {self.model or '-'} {self.status}{cancelled} "
            f"prompt={self.prompt_tokens} completion={self.completion_tokens} "
            f"queue_ms={_ms(self.queue_wait)} load_ms={_ms(self.load_wait)} "
            f"ttft_ms={_ms(self.ttft)} total_ms={_ms(self.total)}"
        )

    def to_dict(self) -> dict[str, Any]:
        tokens_per_s = None
        if self.completion_tokens and self.ttft is not None and self.total > self.ttft:
            tokens_per_s = round(self.completion_tokens / (self.total - self.ttft), 2)
        principal = self.principal
        return {
            "request_id": self.request_id,
            "time": self.wall,
            "key": principal.key_name if principal is not None else None,
            "user": principal.username if principal is not None else None,
            "model": self.model or None,
            "route": self.route,
            "status": self.status,
            "stream": self.stream,
            "cancelled": self.cancelled,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "queue_ms": _ms(self.queue_wait),
            "load_ms": _ms(self.load_wait),
            "ttft_ms": _ms(self.ttft),
            "total_ms": _ms(self.total),
            "tokens_per_s": tokens_per_s,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _object_after(body: bytes, key: bytes) -> dict[str, Any] | None:
    """The JSON object that is the value of the last ``key`` in ``body``."""
    at = body.rfind(key)
    if at < 0:
        return None
    colon = body.find(b":", at + len(key))
    if colon < 0:
        return None
    try:
        text = body[colon + 1 : colon + 4096].decode("utf-8", errors="replace").lstrip()
        value, _ = _decoder.raw_decode(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


BATCH_DELAY = 0.02
"""Seconds a finished request's books wait for the next requests' (see ``Telemetry``)."""


class Telemetry:
    """What the gateway keeps of each request to a model: the ledger's row (the balance is
    settled beside the lease, not here), the metrics, the activity list, the access log.

    A request's books are kept after it, in batches: every ``BATCH_DELAY``, all requests
    finished meanwhile. Kept one by one at the end of each request, they cost the gateway
    42 µs of CPU a request, most of it in reaching code that had gone cold in the CPU's caches
    while the request waited on the engine and the client; batched, that is paid once per
    batch (B1, one run: 448 against 413 µs a request in all). Whatever reads the books
    (``/metrics``, ``/api/activity``, the ledger's flush) books what is waiting first, so
    nobody reads them behind. A request whose charge was left unsettled (a fault) is booked
    at once: settling frees its rate-limit place.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        metrics: bool,
        access_log: bool,
        activity_kept: int,
        accounts: Accounts | None = None,
    ) -> None:
        self._metrics = Metrics(scheduler) if metrics else None
        if self._metrics is not None:
            scheduler.subscribe(self._metrics.on_event)
        self._activity: Feed[Trace] = Feed(activity_kept)
        self._access_log = access_log
        self._accounts = accounts
        if accounts is not None:
            accounts.ledger.collect = self.flush  # a flush of the ledger has every row
        self._finished: list[Trace] = []
        self._timer: asyncio.TimerHandle | None = None

    @property
    def metrics(self) -> Metrics | None:
        """The Prometheus series, with every request finished so far."""
        self.flush()
        return self._metrics

    @property
    def activity(self) -> Feed[Trace]:
        """The last requests, every one finished so far among them."""
        self.flush()
        return self._activity

    def finish(self, trace: Trace) -> None:
        """Books a finished request: its ledger row, metrics, activity and access log line,
        within ``BATCH_DELAY``, together with the others finished meanwhile (see the class)."""
        if trace.charge is not None and trace.charge.cost is None:
            # Left unsettled (a fault, logged): its rate-limit place is freed now, not later.
            self.flush()
            self._book(trace)
            return
        self._finished.append(trace)
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            # Its own context: not the first request's (its request id among them).
            self._timer = loop.call_later(BATCH_DELAY, self.flush, context=contextvars.Context())

    def flush(self) -> None:
        """Books every request finished so far (what reads the books calls this first)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._finished:
            return
        traces, self._finished = self._finished, []
        for trace in traces:
            try:
                self._book(trace)
            except Exception:
                log.exception("request %s: its books could not be kept", trace.request_id)

    def _book(self, trace: Trace) -> None:
        if self._accounts is not None:
            self._accounts.finish(trace.principal, trace.charge, _usage(trace))
        if self._metrics is not None:
            self._metrics.observe(trace)
        self._activity.append(trace)
        if self._access_log and access_log.isEnabledFor(logging.INFO):
            # The JSON log writes ``access`` as its ``to_dict``; the line bears the time the
            # request ended and its id, not the batch's.
            logbook.info(
                access_log,
                trace.access_line(),
                created=trace.wall + trace.total,
                access=trace,
                request_id=trace.request_id,
            )


def _usage(trace: Trace) -> Usage:
    return Usage(
        time=trace.wall,
        request_id=trace.request_id,
        model=trace.model or None,
        route=trace.route,
        status=trace.status,
        prompt_tokens=trace.prompt_tokens,
        completion_tokens=trace.completion_tokens,
        price=trace.price,
        queue_ms=_ms(trace.queue_wait),
        load_ms=_ms(trace.load_wait),
        ttft_ms=_ms(trace.ttft),
        total_ms=_ms(trace.total) or 0.0,
        cancelled=trace.cancelled,
    )


class Observe:
    """Traces the requests to ``paths`` (the model routes) from arrival to the last byte."""

    def __init__(self, app: ASGIApp, paths: frozenset[str]) -> None:
        self.app = app
        self._paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self._paths:
            await self.app(scope, receive, send)
            return
        telemetry: Telemetry | None = getattr(scope["app"].state, "telemetry", None)
        state = scope.setdefault("state", {})
        trace = Trace(
            state.get("request_id", ""),
            scope["method"],
            scope["path"],
            time.perf_counter(),
            time.time(),
        )
        state["trace"] = trace

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                trace.status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except BaseException:
            trace.status = trace.status or 500
            raise
        finally:
            trace.total = time.perf_counter() - trace.started
            trace.principal = state.get("principal")
            if telemetry is not None:
                telemetry.finish(trace)
