"""A gateway that follows serves the models itself and passes everything else on to the
leader: what is loaded (``/api/ps``), the catalog's lists, events, logs, loads and unloads,
keys and users, the web page. The request goes as the client sent it, its key with it, so
the leader checks who may do what exactly as when it is asked directly; its answer comes
back as it comes (a followed log or event stream too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.api.broker import Link
from modelyard.api.leases import PREFIX, TOKEN_HEADER, Leases, answer
from modelyard.api.proxy import Upstream
from modelyard.api.routes import MODEL_ROUTES

log = logging.getLogger(__name__)

LOCAL = MODEL_ROUTES | {"/health", "/metrics", "/v1/messages/count_tokens"}
"""What a following gateway answers itself: the models (through leases) and its own state."""
TOKEN_HEADER_BYTES = TOKEN_HEADER.encode()
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "host",
        "content-length",
        TOKEN_HEADER,  # only a gateway sets it
        "x-forwarded-for",  # nor is a client's own taken for the address it came from
    }
)


class Forward:
    """Passes what a following gateway does not serve itself on to the leader."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        link: Link | None = scope["app"].state.link if scope["type"] == "http" else None
        if link is None:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(PREFIX):  # a gateway's call: the leader's alone to answer
            await answer(scope["app"].state.leases, scope, receive, send)
            return
        if link.promoted is not None:  # this gateway leads
            _from_gateway(scope)
        if link.promoted is not None or path in LOCAL:
            await self.app(scope, receive, send)
            return
        leader = link.leader
        if leader is None:  # between two leaders
            await _no_leader("no gateway leads now", send)
            return
        upstream: Upstream = scope["app"].state.upstream
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        relay = asyncio.ensure_future(_relay(upstream, leader, scope, bytes(body), send))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((relay, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not relay.done():
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await relay
        if relay.done() and not relay.cancelled():
            relay.result()


async def _relay(upstream: Upstream, leader: str, scope: Scope, body: bytes, send: Send) -> None:
    query = scope.get("query_string", b"").decode("latin-1")
    url = f"{leader}{scope['path']}" + (f"?{query}" if query else "")
    headers = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in scope["headers"]
        if name.decode("latin-1").lower() not in _HOP
    ]
    client = scope.get("client")
    if client:
        headers.append(("X-Forwarded-For", str(client[0])))
    link: Link = scope["app"].state.link
    headers += link.headers.items()  # the leader trusts the address given by a gateway
    request_id = scope.get("state", {}).get("request_id")
    if request_id:  # the leader's log lines name the client's request
        headers = [h for h in headers if h[0].lower() != "x-request-id"]
        headers.append(("X-Request-Id", request_id))
    started = False
    try:
        async with upstream.session.request(
            scope["method"], url, data=body, headers=headers, allow_redirects=False
        ) as answer:
            out = [
                (k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in answer.headers.items()
                if k.lower() not in _HOP and k.lower() != "x-request-id"
            ]
            await send({"type": "http.response.start", "status": answer.status, "headers": out})
            started = True
            async for chunk in answer.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
    except (aiohttp.ClientError, OSError) as exc:
        if started:
            log.warning("the leading gateway %s broke off an answer: %s", leader, exc)
            await send({"type": "http.response.body", "body": b""})
            return
        await _no_leader(f"the leading gateway at {leader} cannot be reached: {exc}", send)


async def _no_leader(message: str, send: Send) -> None:
    error = {"message": message, "type": "server_error", "param": None, "code": "no_leader"}
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [(b"content-type", b"application/json"), (b"retry-after", b"2")],
        }
    )
    await send({"type": "http.response.body", "body": orjson.dumps({"error": error})})


def _from_gateway(scope: Scope) -> None:
    """In a leader, a request another gateway passed on is from the client that sent it
    there (``X-Forwarded-For``): the brakes on logins and sign-ups count by that address."""
    leases: Leases | None = scope["app"].state.leases
    if leases is None:
        return
    token = forwarded = None
    for name, value in scope["headers"]:
        if name == b"x-forwarded-for":
            forwarded = value.decode("latin-1").split(",")[-1].strip()
        elif name == TOKEN_HEADER_BYTES:
            token = value.decode("latin-1")
    if forwarded and token is not None and leases.trusts(token):
        scope["client"] = (forwarded, 0)


async def _disconnected(receive: Receive) -> None:
    message: Message = await receive()
    while message["type"] != "http.disconnect":
        message = await receive()
