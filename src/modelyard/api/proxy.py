"""The upstream client: one pooled aiohttp session for every runner, and the SSE relay.

Runners are OpenAI-compatible servers; a request is posted as-is and the answer is passed
back. Streams are relayed chunk by chunk as they arrive, never re-assembled; closing the
relay (the client left) closes the upstream connection, which makes llama.cpp stop
generating for that slot.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from modelyard.api.errors import sse_error_frame
from modelyard.errors import RunnerError, UpstreamError

# llama.cpp's HTTP server closes keep-alive connections idle for 5 s: drop ours sooner so a
# pooled connection is rarely dead when reused.
_KEEPALIVE = 4.0


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

    async def close(self) -> None:
        await self._session.close()

    async def post(
        self, url: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """POSTs JSON; retries once when the connection failed before anything came back.

        Failures before a response are either a refused connection or a pooled connection
        the runner had already closed: in both cases the runner never took the request.
        """
        body = json.dumps(payload).encode()
        headers = {**headers, "Content-Type": "application/json"}
        for attempt in (1, 2):
            try:
                return await self._session.post(url, data=body, headers=headers)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientConnectorError) as exc:
                if attempt == 2:
                    raise RunnerError(f"model server unreachable: {exc}") from exc
            except aiohttp.ClientError as exc:
                raise RunnerError(f"model server request failed: {exc}") from exc
        raise AssertionError("unreachable")


async def read_answer(response: aiohttp.ClientResponse) -> bytes:
    """The whole body of a non-streamed answer; error answers become ``UpstreamError``."""
    try:
        body = await response.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise RunnerError(f"model server failed while answering: {exc}") from exc
    finally:
        response.release()
    if response.status >= 400:
        raise upstream_error(response.status, body)
    return body


def upstream_error(status: int, body: bytes) -> UpstreamError:
    """llama.cpp's ``{"error": {"code": 400, "message", "type"}}`` into our envelope."""
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
    return UpstreamError(message or f"model server answered {status}", status=status, **fields)


async def relay(
    response: aiohttp.ClientResponse, on_close: Callable[[], None]
) -> AsyncIterator[bytes]:
    """Yields the upstream body as it arrives; a broken upstream ends with an SSE error frame.

    ``on_close`` runs exactly once, however the relay ends (done, upstream failure, or the
    client going away, which cancels the consumer and closes the upstream connection).
    """
    complete = False
    tail = b""
    try:
        async for chunk in response.content.iter_any():
            tail = chunk[-2:]
            yield chunk
        complete = True
    except (TimeoutError, aiohttp.ClientError) as exc:
        # Terminate a half-written event first so the error frame parses on its own.
        prefix = b"" if tail in (b"", b"\n\n") else b"\n\n"
        error = RunnerError(f"model server failed while streaming: {exc}")
        yield prefix + sse_error_frame(error)
    finally:
        if complete:
            response.release()
        else:
            response.close()
        on_close()
