"""The web page: ``/ui/`` serves it (files of ``modelyard/ui``, no build step, nothing from
other sites), and ``/`` sends a browser there while telling programs the server runs.
``/docs`` is the interactive API documentation, Swagger UI served from here too (its files
come with the ``fastapi-offline`` package), so it works without the internet."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

router = APIRouter()

FILES = Path(__file__).resolve().parent.parent / "ui"
DOCS_FILES = Path(fastapi_offline.__file__).resolve().parent / "static"
"""Swagger UI's script, style sheet and icon."""


def assets() -> ASGIApp:
    """The page's files, compressed for the browsers that take it."""
    return GZipMiddleware(StaticFiles(directory=FILES, html=True), minimum_size=500)


def docs_assets() -> ASGIApp:
    return GZipMiddleware(StaticFiles(directory=DOCS_FILES), minimum_size=500)


@router.get("/docs", include_in_schema=False)
async def docs() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="modelyard API",
        swagger_js_url="/docs/assets/swagger-ui-bundle.js",
        swagger_css_url="/docs/assets/swagger-ui.css",
        swagger_favicon_url="/docs/assets/favicon.png",
    )


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)  # HEAD: Ollama's check
async def root(request: Request) -> Response:
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse("/ui/", status_code=307)
    return PlainTextResponse("modelyard is running")
