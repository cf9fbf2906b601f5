"""``/upstream/{model}/{path}``: a model's own engine API (llama.cpp's ``/props``, ``/slots``,
``/tokenize``, ``/detokenize``, its web page…), reached through the gateway.

The model is loaded on demand like for any request and holds a slot while the call runs;
the runner's key is added, so nothing else on the machine needs it. Answers are passed on
whole (status, type and body), not streamed. Admins only when keys are required, and, like
the admin routes, refused from other web sites (``api.guard``).
"""

from __future__ import annotations

import aiohttp
from fastapi import APIRouter, Request
from starlette.responses import Response

from modelyard.api.request import scheduler_of
from modelyard.errors import RunnerError

router = APIRouter()

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
PATH = "/upstream/{model}/{path:path}"
_KEPT = ("content-type", "content-encoding", "cache-control", "retry-after")
"""Headers passed on both ways: the body is relayed as it is, compressed or not."""


async def passthrough(request: Request, model: str, path: str) -> Response:
    scheduler = scheduler_of(request)
    spec = scheduler.spec(model)  # 404 model_not_found
    body = await request.body()
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
                kept = {k: v for k, v in got.headers.items() if k.lower() in _KEPT}
                status = got.status
        except aiohttp.ClientError as exc:
            raise RunnerError(f"model server request failed: {exc}") from exc
        served = True
        return Response(content, status_code=status, headers=kept)
    finally:
        scheduler.release(lease, served=served)


for _method in METHODS:  # one route per method: each has its own operation in /openapi.json
    router.add_api_route(PATH, passthrough, methods=[_method], name=f"upstream_{_method.lower()}")
