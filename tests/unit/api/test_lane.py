"""The model routes' short way to their endpoints answers as FastAPI would."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from modelyard.api import errors
from modelyard.api.app import ROUTERS
from modelyard.api.front import App, RequestId
from modelyard.api.lane import Lane, model_endpoints
from modelyard.api.routes import ROUTES
from modelyard.errors import ModelNotFoundError

router = APIRouter()
taken: list[bool] = []
"""Per request to ``chat``: whether FastAPI's router routed it (it sets the endpoint)."""


class _Shape(BaseModel):
    n: int


@router.post("/v1/chat/completions")
async def chat(request: Request) -> Response:
    taken.append("endpoint" in request.scope)
    what = (await request.json()).get("what")
    if what == "unknown model":
        raise ModelNotFoundError("The model 'x' does not exist", param="model")
    if what == "invalid":
        _Shape.model_validate({"n": "many"})
    if what == "bug":
        raise RuntimeError("a bug")
    return JSONResponse({"ok": True})


@router.post("/api/chat")
async def ollama_chat(request: Request) -> Response:
    raise ModelNotFoundError("The model 'x' does not exist", param="model")


@router.post("/v1/embeddings")
async def needs_fastapi(request: Request, dry_run: bool = False) -> Response:
    """A parameter of its own: FastAPI serves it."""
    return JSONResponse({"dry_run": dry_run, "routed": "endpoint" in request.scope})


class _Broken:
    """A layer with a bug for requests that ask for it (``x-break``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (b"x-break", b"1") in scope["headers"]:
            raise RuntimeError("a layer's bug")
        await self.app(scope, receive, send)


def _client() -> httpx.AsyncClient:
    """The app as ``create_app`` lays it out: the layers ahead of FastAPI's own."""
    app = App()
    errors.install(app)
    app.include_router(router)
    app.front = RequestId(_Broken(Lane(app.inside, endpoints=model_endpoints([router]))))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def test_lane_takes_every_model_route_of_the_server() -> None:
    served = {key for key, route in ROUTES.items() if route.model}
    assert set(model_endpoints(ROUTERS)) == served


def test_lane_leaves_an_endpoint_that_needs_fastapi() -> None:
    assert set(model_endpoints([router])) == {
        ("POST", "/v1/chat/completions"),
        ("POST", "/api/chat"),
    }


async def test_lane_answers_and_errors_as_fastapi_would(caplog: pytest.LogCaptureFixture) -> None:
    taken.clear()
    async with _client() as client:
        ok = await client.post("/v1/chat/completions", json={})
        assert ok.status_code == 200
        assert ok.json() == {"ok": True}

        missing = await client.post("/v1/chat/completions", json={"what": "unknown model"})
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "model_not_found"

        invalid = await client.post("/v1/chat/completions", json={"what": "invalid"})
        assert invalid.status_code == 400
        assert invalid.json()["error"]["param"] == "n"

        ollama = await client.post("/api/chat", json={})
        assert ollama.status_code == 404
        assert ollama.json()["error"] == "The model 'x' does not exist"  # Ollama's shape

        with caplog.at_level(logging.ERROR, logger="modelyard.api.errors"):
            bug = await client.post("/v1/chat/completions", json={"what": "bug"})
        assert bug.status_code == 500
        assert bug.json()["error"]["message"] == "Internal server error"
        assert bug.headers["x-request-id"]
        assert "unhandled RuntimeError on POST /v1/chat/completions" in caplog.text

        other = await client.post("/v1/embeddings", params={"dry_run": "true"}, json={})
        assert other.json() == {"dry_run": True, "routed": True}
    assert taken == [False] * 4


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
async def test_a_bug_in_a_layer_is_a_logged_500_in_openais_shape(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Outside FastAPI's own layers, an exception a layer raises is still answered (its
    error middleware did that before) and logged, whichever way the route goes on."""
    async with _client() as client:
        with caplog.at_level(logging.ERROR, logger="modelyard.api.errors"):
            bug = await client.post(path, json={}, headers={"x-break": "1", "x-request-id": "r1"})
        assert bug.status_code == 500
        assert bug.json()["error"] == {
            "message": "Internal server error",
            "type": "server_error",
            "param": None,
            "code": None,
        }
        assert bug.headers["x-request-id"] == "r1"
        assert f"unhandled RuntimeError on POST {path}" in caplog.text
        # The next request is served as ever.
        ok = await client.post(path, json={})
        assert ok.status_code == 200
