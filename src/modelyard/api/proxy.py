"""The upstream client: the runners' requests on pooled connections (``api.wire``), and an
aiohttp session for every other call to a runner (its metrics, its own API).

Runners are OpenAI-compatible servers; a request is posted as-is and the answer is passed
back (``modelyard.api.dispatch`` relays streams). Closing an answer before its end (the
client left) closes the upstream connection, which makes llama.cpp stop generating for that
slot.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from modelyard.api.wire import Answer, Pool, Unanswered, WireError
from modelyard.errors import ModelyardError, RunnerError, RunnerUnreachableError, UpstreamError

# llama.cpp's HTTP server closes keep-alive connections idle for 5 s: drop ours sooner so a
# pooled connection is rarely dead when reused.
_KEEPALIVE = 4.0

UPSTREAM_ERRORS = (WireError, aiohttp.ClientError)
"""What a failed connection to a runner raises."""


class Upstream:
    def __init__(self, connect_timeout: float = 10.0) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0, limit_per_host=0, keepalive_timeout=_KEEPALIVE, ttl_dns_cache=None
            ),
            timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout),
            skip_auto_headers=("User-Agent",),
            auto_decompress=False,
        )
        self._pool = Pool(connect_timeout=connect_timeout, keepalive=_KEEPALIVE)

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pooled session (for other calls to runners, e.g. their metrics)."""
        return self._session

    async def close(self) -> None:
        await self._pool.close()
        await self._session.close()

    def sever(self, base_url: str) -> int:
        """Aborts the requests under way to the runner at ``base_url`` (its node is lost);
        how many there were."""
        parts = urlsplit(base_url)
        if not parts.hostname:
            return 0
        return self._pool.sever(parts.hostname, parts.port or 80)

    async def post(self, url: str, payload: dict[str, Any], headers: Mapping[str, str]) -> Answer:
        """POSTs JSON; retries once when the connection failed before anything came back.

        Failures before a response are a refused connection, a reset one, or a pooled
        connection the runner had already closed: the runner never took the request. Twice
        in a row means the runner is gone: ``RunnerUnreachableError``.
        """
        body = _dumps(payload)
        headers = {**headers, "Content-Type": "application/json"}
        for attempt in (1, 2):
            try:
                return await self._pool.post(url, headers, body)
            except Unanswered as exc:
                if attempt == 2:
                    raise RunnerUnreachableError(f"model server unreachable: {exc}") from exc
            except (WireError, ValueError) as exc:
                raise RunnerError(f"model server request failed: {exc}") from exc
        raise AssertionError("unreachable")


def _dumps(payload: dict[str, Any]) -> bytes:
    """``payload`` as JSON: by orjson, or by Python's writer where orjson cannot (an integer
    past 64 bits; request bodies with ``NaN`` are refused before they get here)."""
    try:
        return orjson.dumps(payload)
    except TypeError:
        return json.dumps(payload).encode()


async def read_answer(response: Answer, *, passthrough: bool = False) -> bytes:
    """The whole body of a non-streamed answer; error answers become ``UpstreamError``
    (``passthrough``: a server error too keeps its status, as a remote's does)."""
    try:
        body = await response.read()
    except UPSTREAM_ERRORS as exc:
        raise RunnerError(f"model server failed while answering: {exc}") from exc
    finally:
        response.release()
    if response.status >= 400:
        error = upstream_error(response.status, body, passthrough=passthrough)
        retry_after = response.headers.get("Retry-After", "")
        if retry_after.isdigit():
            error.retry_after = float(retry_after)
        raise error
    return body


def upstream_error(status: int, body: bytes, *, passthrough: bool = False) -> ModelyardError:
    """llama.cpp's ``{"error": {"code": 400, "message", "type"}}`` into our envelope.

    A client mistake (4xx) keeps the runner's status and words; a failure of the runner
    itself (5xx) is a 502 ``runner_failed`` that quotes it: the gateway did not fail.
    ``passthrough`` (a remote server, itself a gateway): every status is kept."""
    message = body.decode("utf-8", errors="replace")[:2000]
    fields: dict[str, str | None] = {"type": None, "param": None, "code": None}
    try:
        data = json.loads(body)
        error = data.get("error", data) if isinstance(data, dict) else {}
        if isinstance(error, dict):
            message = str(error.get("message", message))
            for key in fields:
                fields[key] = error[key] if isinstance(error.get(key), str) else None
        elif isinstance(error, str):
            message = error
    except ValueError:
        pass
    if status >= 500 and not passthrough:
        return RunnerError(f"model server failed ({status}): {message}")
    return UpstreamError(message or f"model server answered {status}", status=status, **fields)
