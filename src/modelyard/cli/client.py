"""The CLI's HTTP client: the server's URL, errors turned into one clear line."""

from __future__ import annotations

from typing import Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape

from modelyard.config import DEFAULT_PORT, Settings

err = Console(stderr=True)


def server_url(url: str | None) -> str:
    return (url or Settings().url or f"http://127.0.0.1:{DEFAULT_PORT}").rstrip("/")


def call(url: str, method: str, path: str, json: Any = None, timeout: float = 30.0) -> Any:
    """The decoded JSON answer; exits with a message when the server is absent or says no."""
    try:
        response = httpx.request(method, url + path, json=json, timeout=timeout)
    except httpx.ConnectError:
        err.print(
            f"[red]No modelyard server is running at {url}.[/] Start one with: modelyard serve"
        )
        raise typer.Exit(1) from None
    except httpx.HTTPError as exc:
        err.print(f"[red]Request to {url}{path} failed:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.status_code >= 400:
        message = response.text
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            message = data["error"].get("message", message)
        err.print(f"[red]Error ({response.status_code}):[/] {escape(str(message))}", soft_wrap=True)
        raise typer.Exit(1)
    return data
