#!/usr/bin/env python3
"""A canned OpenAI-compatible server, the upstream for the overhead scenarios and for the
tests of the serving path that need no real model.

It takes ``llama-server``'s flags (only ``--port`` matters), so modelyard can run it as a
model's ``llama_server`` binary and the bench can run the very same program directly. Like
llama-server, it answers only requests carrying ``LLAMA_API_KEY`` when that is set.

Tests script a request's fate with extra body fields (the gateway passes them on):
``x_headers_after_ms`` (wait before answering at all), ``x_chunks`` and ``x_delay_ms``
(stream length and pace; by default the canned answer's seven tokens, at once),
``x_abort_after`` (drop the connection after that many chunks), ``x_status`` (answer with
that error status), ``x_error_after`` (an error event after that many chunks, as llama.cpp
sends when it cannot parse the model's output; also read as ``x_error_after:N`` from the
last message, which every API's translation keeps). Like an engine, it writes no more
chunks than ``max_tokens``. A stream ends like llama.cpp's, with a chunk
that carries ``timings`` (``prompt_n``, ``predicted_n``), then, when the request asks for
``stream_options.include_usage``, one with ``usage`` and no choices; with
``timings_per_token`` every chunk carries its ``timings``. ``/metrics`` counts the
requests in llama.cpp's format; ``--metrics-delay-ms`` makes it slow.

As any program run by the command engine, it also takes ``--api-key`` (like vLLM's),
``--ignore-sigterm``, ``--noise-mb N`` (prints N MiB before serving), and answers
``x_echo`` with the body and whether a key came.

Like vLLM, with ``--enable-sleep-mode`` and ``VLLM_SERVER_DEV_MODE=1`` it serves ``POST
/sleep?level=N``, ``POST /wake_up`` and ``GET /is_sleeping``; asleep it refuses
completions (503). ``--ballast-mb N`` holds N MiB of memory while awake, kept asleep at
level 1 (vLLM moves the weights to RAM) and given back at level 2.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import os
import signal
import sys

from aiohttp import web

WORDS = ["Hello", " from", " the", " canned", " respon", "der", "."]
"""The canned answer, a token each: a stream says the same as a whole answer unless told
otherwise (``--chunks``, ``x_chunks``)."""
ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(WORDS)},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": len(WORDS), "total_tokens": 12},
    }
).encode()


def _scripted(body: dict[str, object], name: str) -> int | None:
    """A number scripted as ``name:N`` in the last message, for the APIs whose translation
    keeps no extra field (Ollama's, Anthropic's, the Responses API)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    text = str(messages[-1].get("content") if isinstance(messages[-1], dict) else "")
    _, found, rest = text.partition(f"{name}:")
    digits = rest.split()[0] if found and rest.split() else ""
    return int(digits) if digits.isdigit() else None


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False)  # llama-server's --metrics is not ours
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=len(WORDS))
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--metrics-delay-ms", type=float, default=0.0)
    parser.add_argument("--api-key")
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--noise-mb", type=int, default=0)
    parser.add_argument("--enable-sleep-mode", action="store_true")
    parser.add_argument("--ballast-mb", type=int, default=0)
    args, _ = parser.parse_known_args()
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for _ in range(args.noise_mb * 1024):
        sys.stdout.write("noise " * 170 + "\n")  # 1 KiB a line
    sys.stdout.flush()
    served = [0]
    ballast = [bytearray(os.urandom(1024)) * (args.ballast_mb * 1024)]
    sleeping = [0]
    key = args.api_key or os.environ.get("LLAMA_API_KEY")
    expected = f"Bearer {key}".encode() if key else None

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def chat(request: web.Request) -> web.StreamResponse:
        if expected is not None and not hmac.compare_digest(
            request.headers.get("Authorization", "").encode(), expected
        ):
            return web.json_response(
                {
                    "error": {
                        "code": 401,
                        "message": "Invalid API Key",
                        "type": "authentication_error",
                    }
                },
                status=401,
            )
        if sleeping[0]:
            error = {"code": 503, "message": "the engine is sleeping", "type": "x"}
            return web.json_response({"error": error}, status=503)
        body = await request.json()
        served[0] += 1
        if body.get("x_echo"):
            keyed = bool(request.headers.get("Authorization"))
            return web.json_response({"received": body, "authorization": keyed})
        if body.get("x_headers_after_ms"):
            await asyncio.sleep(body["x_headers_after_ms"] / 1000)
        if body.get("x_status"):
            error = {"code": body["x_status"], "message": "scripted failure", "type": "x"}
            return web.json_response({"error": error}, status=body["x_status"])
        if not body.get("stream"):
            return web.Response(body=ANSWER, content_type="application/json")
        chunks = body.get("x_chunks", args.chunks)
        if isinstance(body.get("max_tokens"), int):
            chunks = min(chunks, body["max_tokens"])
        delay = body.get("x_delay_ms", args.delay_ms) / 1000
        abort_after = body.get("x_abort_after")
        error_after = body.get("x_error_after", _scripted(body, "x_error_after"))
        per_token = bool(body.get("timings_per_token"))
        legacy = request.path == "/v1/completions"
        head = {"id": "chatcmpl-bench", "created": 0, "model": "bench",
                "object": "text_completion" if legacy else "chat.completion.chunk"}  # fmt: skip
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        pending: list[bytes] = []

        async def emit(event: dict[str, object] | str, last: bool = False) -> None:
            # Unpaced, the stream goes out in one write, as the whole answer does.
            data = event if isinstance(event, str) else json.dumps(event)
            pending.append(b"data: " + data.encode() + b"\n\n")
            if delay or last:
                await response.write(b"".join(pending))
                pending.clear()

        for i in range(chunks):
            if i == abort_after:
                await response.write(b"".join(pending))
                assert request.transport is not None
                request.transport.abort()
                return response
            if i == error_after:
                error = {"code": 500, "message": "Failed to parse input", "type": "server_error"}
                await emit({"error": error}, last=True)
                return response
            word = WORDS[i % len(WORDS)]
            choice = (
                {"index": 0, "text": word} if legacy else {"index": 0, "delta": {"content": word}}
            )
            chunk: dict[str, object] = {**head, "choices": [choice]}
            if per_token:
                chunk["timings"] = {"prompt_n": 5, "cache_n": 0, "predicted_n": i + 1}
            await emit(chunk)
            if delay:
                await asyncio.sleep(delay)
        end = {"index": 0, "finish_reason": "stop", **({"text": ""} if legacy else {"delta": {}})}
        await emit({**head, "choices": [end], "timings": {"prompt_n": 5, "predicted_n": chunks}})
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 5, "completion_tokens": chunks, "total_tokens": 5 + chunks}
            await emit({**head, "choices": [], "usage": usage})
        await emit("[DONE]", last=True)
        return response

    async def metrics(_: web.Request) -> web.Response:
        if args.metrics_delay_ms:
            await asyncio.sleep(args.metrics_delay_ms / 1000)
        text = (
            "# HELP llamacpp:requests_total Requests received\n"
            "# TYPE llamacpp:requests_total counter\n"
            f"llamacpp:requests_total {served[0]}\n"
        )
        return web.Response(text=text, content_type="text/plain")

    async def sleep(request: web.Request) -> web.Response:
        sleeping[0] = int(request.query.get("level", "1"))
        if sleeping[0] == 2:
            ballast.clear()
        return web.Response()

    async def wake_up(_: web.Request) -> web.Response:
        if not ballast:
            ballast.append(bytearray(os.urandom(1024)) * (args.ballast_mb * 1024))
        sleeping[0] = 0
        return web.Response()

    async def is_sleeping(_: web.Request) -> web.Response:
        return web.json_response({"is_sleeping": bool(sleeping[0])})

    app = web.Application()
    if args.enable_sleep_mode and os.environ.get("VLLM_SERVER_DEV_MODE") == "1":
        app.router.add_post("/sleep", sleep)
        app.router.add_post("/wake_up", wake_up)
        app.router.add_get("/is_sleeping", is_sleeping)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", chat)
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        handle_signals=not args.ignore_sigterm,
    )


if __name__ == "__main__":
    main()
