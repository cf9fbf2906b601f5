"""What every CLI command shares: the server's URL and options, errors turned into one clear
line, the local configuration, and how memory figures are written."""

from __future__ import annotations

import json as jsonlib
from collections.abc import Generator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape

from modelyard.config import DEFAULT_PORT, Config, Settings, load_config
from modelyard.errors import ConfigError
from modelyard.quantity import format_size

err = Console(stderr=True)


def console() -> Console:
    """Standard output: the terminal's width, or when piped, as wide as the content (a table
    never cuts what a user must type)."""
    terminal = Console()
    return terminal if terminal.is_terminal else Console(width=10_000)


def relative(iso: str | None, now: datetime | None = None) -> str | None:
    """``in 4 minutes``, ``2 hours ago`` for an ISO time (``None`` stays ``None``)."""
    if not iso:
        return None
    when = datetime.fromisoformat(iso)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    amount = abs(seconds)
    unit, size = next(
        ((u, s) for u, s in (("day", 86400), ("hour", 3600), ("minute", 60)) if amount >= s),
        ("second", 1),
    )
    n = round(amount / size)
    text = f"{n} {unit}{'s' if n != 1 else ''}"
    return f"in {text}" if seconds >= 0 else f"{text} ago"


UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="The server (default $MODELYARD_URL or http://127.0.0.1:8000)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def config_or_exit(settings: Settings | None = None) -> Config:
    """The configuration; an invalid one is printed and the command exits with status 2."""
    try:
        return load_config(settings)
    except ConfigError as exc:
        err.print("[red]Invalid configuration:[/]")
        err.print(exc.message, markup=False, soft_wrap=True)
        raise typer.Exit(2) from None


def footprint_text(footprint: dict[str, int] | None) -> str:
    """``1.2 GiB`` for RAM, ``gpu0 3.0 GiB`` for a device; ``-`` for none."""
    if not footprint:
        return "-"
    return ", ".join(
        format_size(n) if d == "ram" else f"{d} {format_size(n)}" for d, n in footprint.items()
    )


def server_url(url: str | None) -> str:
    """``--url``, else ``$MODELYARD_URL``, else the default; ``localhost:9999`` means
    ``http://localhost:9999``."""
    chosen = (url or Settings().url or f"http://127.0.0.1:{DEFAULT_PORT}").rstrip("/")
    return chosen if "://" in chosen else f"http://{chosen}"


def session_file() -> Path:
    """Where ``modelyard login`` keeps its sessions (one per server URL), readable by the
    user alone."""
    return Settings().data_home() / "cli-sessions.json"


def auth_headers(url: str) -> dict[str, str]:
    """``$MODELYARD_API_KEY``, else the session ``modelyard login`` saved for ``url``."""
    key = Settings().api_key
    if not key:
        try:
            key = jsonlib.loads(session_file().read_text()).get(url)
        except (OSError, ValueError, AttributeError):
            key = None
    return {"Authorization": f"Bearer {key}"} if key else {}


def call(
    url: str,
    method: str,
    path: str,
    json: Any = None,
    timeout: float | None = 30.0,
    params: Any = None,
    text: bool = False,
) -> Any:
    """The decoded JSON answer (``text``: the body as it is); exits with a message when the
    server is absent or says no."""
    try:
        response = httpx.request(
            method,
            url + path,
            json=json,
            timeout=timeout,
            params=params,
            headers=auth_headers(url),
        )
    except httpx.ConnectError:
        err.print(
            f"[red]No modelyard server is running at {url}.[/] Start one with: modelyard serve"
        )
        raise typer.Exit(1) from None
    except httpx.HTTPError as exc:
        err.print(f"[red]Request to {url}{path} failed:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    if response.status_code >= 400:
        _fail(response)
    if text:
        return response.text
    try:
        return response.json()
    except ValueError:
        return None


def _fail(response: httpx.Response) -> NoReturn:
    message = response.text
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        message = data["error"].get("message", message)
    elif isinstance(data, dict) and isinstance(data.get("error"), str):
        message = data["error"]  # Ollama's shape, on the routes Ollama's clients share
    if response.status_code == 401:
        message = f"{message}. Set MODELYARD_API_KEY, or run: modelyard login"
    err.print(f"[red]Error ({response.status_code}):[/] {escape(str(message))}", soft_wrap=True)
    raise typer.Exit(1)


def server_running(url: str) -> bool:
    """Whether a modelyard server answers at ``url`` (commands that can work without one ask)."""
    try:
        return httpx.get(url + "/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def events(
    url: str, path: str, json: Any = None, *, method: str = "POST", params: Any = None
) -> Generator[Any, None, None]:
    """The ``data:`` frames of a server-sent event stream, decoded, until ``[DONE]`` or the
    end of the stream."""
    timeout = httpx.Timeout(30, read=None)
    try:
        with httpx.stream(
            method,
            url + path,
            json=json,
            params=params,
            timeout=timeout,
            headers={**auth_headers(url), "Accept": "text/event-stream"},
        ) as r:
            if r.status_code >= 400:
                r.read()
                _fail(r)
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    return
                yield jsonlib.loads(data)
    except httpx.HTTPError as exc:
        err.print(f"[red]Request to {url}{path} failed:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
