"""``modelyard logs | events``: what the server and its runners did, after the fact or live."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from modelyard.cli.client import JsonOption, UrlOption, call, events, server_url

out = Console(highlight=False, soft_wrap=True)

FollowOption = Annotated[
    bool, typer.Option("--follow", "-f", help="Keep printing new lines as they come.")
]


def logs(
    model: Annotated[
        str | None, typer.Argument(help="A model (its runner's log); none: the server's own.")
    ] = None,
    follow: FollowOption = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many last lines.")] = 100,
    url: UrlOption = None,
) -> None:
    """Print the server's log, or a model runner's."""
    base = server_url(url)
    path = f"/api/logs/{model}" if model else "/api/logs"
    if not follow:
        for line in call(base, "GET", path + f"?n={lines}")["lines"]:
            out.print(line, markup=False)
        return
    try:
        for line in events(base, path, method="GET", params={"n": lines, "follow": "true"}):
            out.print(line, markup=False)
    except KeyboardInterrupt:
        pass


def events_command(
    follow: FollowOption = False,
    model: Annotated[str | None, typer.Option(help="Only this model's events.")] = None,
    since: Annotated[
        str | None, typer.Option(help="From this time (ISO 8601) or this long ago ('10m').")
    ] = None,
    as_json: JsonOption = False,
    url: UrlOption = None,
) -> None:
    """Print the scheduler's decisions: loads, evictions, refusals, exits, and why."""
    base = server_url(url)
    params: dict[str, Any] = {}
    if model:
        params["model"] = model
    if since:
        params["since"] = since
    if not follow:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        data = call(base, "GET", "/api/events" + (f"?{query}" if query else ""))
        for event in data["events"]:
            _print_event(event, as_json)
        return
    try:
        stream = events(base, "/api/events", method="GET", params={**params, "follow": "true"})
        for event in stream:
            if "id" in event:
                _print_event(event, as_json)
            else:
                out.print(f"[yellow]{escape(event.get('message', ''))}[/]")
    except KeyboardInterrupt:
        pass


def _print_event(event: dict[str, Any], as_json: bool) -> None:
    if as_json:  # times in ISO 8601, as every --json prints them
        when = datetime.fromtimestamp(event["time"], UTC).isoformat(timespec="milliseconds")
        out.print(json.dumps({**event, "time": when}), markup=False)
        return
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event["time"]))
    model = event.get("model") or "-"
    out.print(
        f"{when}  [dim]#{event['id']}[/]  [bold]{escape(model)}[/]  {escape(event['message'])}"
    )
