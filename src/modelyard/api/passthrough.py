"""``/upstream/{model}/{path}``: a model's own engine API (llama.cpp's ``/props``, ``/slots``,
``/tokenize``, ``/detokenize``, its web page…), reached through the gateway.

The model is loaded on demand like for any request and holds a slot while the call runs;
the runner's key is added, so nothing else on the machine needs it. A gzip or deflate
request body is unpacked first (engines take plain ones). Answers are passed on whole
(status, type, encoding and body), not streamed. Admins only when keys are required, and, like
the admin routes, refused from other web sites (``api.guard``).
"""

from __future__ import annotations

import zlib

import aiohttp
from fastapi import APIRouter, Request
from starlette.responses import Response

from modelyard.api.request import config_of, scheduler_of
from modelyard.api.routes import UPSTREAM_METHODS as METHODS
from modelyard.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    RunnerError,
    UnsupportedMediaTypeError,
)

router = APIRouter()

PATH = "/upstream/{model}/{path:path}"
_KEPT = ("content-type", "cache-control", "retry-after")
_ANSWER_KEPT = (*_KEPT, "content-encoding")
"""An answer is relayed as it is, compressed or not."""
_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


async def passthrough(request: Request, model: str, path: str) -> Response:
    scheduler = scheduler_of(request)
    spec = scheduler.spec(model)  # 404 model_not_found
    body = _decoded(request, await request.body())
    lease = await scheduler.acquire(spec.name, request=request.state.request_id)
    served = False
    try:
        url = f"{lease.base_url.rstrip('/')}/{path}"
        if request.url.query:
            url += f"?{request.url.query}"
        headers = dict(lease.headers)
        for name in _KEPT:
            if name in request.headers:
                headers[name] = request.headers[name]
        session = request.app.state.upstream.session
        try:
            async with session.request(request.method, url, data=body, headers=headers) as got:
                content = await got.read()
                kept = {k: v for k, v in got.headers.items() if k.lower() in _ANSWER_KEPT}
                status = got.status
        except aiohttp.ClientError as exc:
            raise RunnerError(f"model server request failed: {exc}") from exc
        served = True
        return Response(content, status_code=status, headers=kept)
    finally:
        scheduler.release(lease, served=served)


def _decoded(request: Request, body: bytes) -> bytes:
    """A gzip or deflate body unpacked (engines take plain bodies; llama.cpp answers 415),
    no larger than the server's request limit."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "identity" or not body:
        return body
    if encoding not in _ENCODINGS:
        raise UnsupportedMediaTypeError(
            f"Content-Encoding {encoding!r} is not supported: send the body plain, gzip or deflate"
        )
    limit = config_of(request).max_request_size
    unpacker = zlib.decompressobj(_ENCODINGS[encoding])
    try:
        plain = unpacker.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequestError(f"The {encoding} body is corrupt: {exc}") from None
    if len(plain) > limit or unpacker.unconsumed_tail:
        raise PayloadTooLargeError(f"The request body unpacks to more than {limit} bytes")
    return plain


for _method in METHODS:  # one route per method: each has its own operation in /openapi.json
    router.add_api_route(PATH, passthrough, methods=[_method], name=f"upstream_{_method.lower()}")
