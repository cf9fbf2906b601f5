"""The web page: ``/ui/`` serves it (files of ``modelyard/ui``, no build step, nothing from
other sites), and ``/`` sends a browser there while telling programs the server runs."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

router = APIRouter()

FILES = Path(__file__).resolve().parent.parent / "ui"


def assets() -> ASGIApp:
    """The page's files, compressed for the browsers that take it."""
    return GZipMiddleware(StaticFiles(directory=FILES, html=True), minimum_size=500)


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)  # HEAD: Ollama's check
async def root(request: Request) -> Response:
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse("/ui/", status_code=307)
    return PlainTextResponse("modelyard is running")
