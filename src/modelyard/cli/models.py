"""``modelyard pull | show | rm``: through the running server, or on the files when none runs.

With a server, the server does the work (so it serves a pulled model at once and never
deletes a model it is using); without one, the same code runs here on the same directories.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from modelyard.cli.client import (
    JsonOption,
    UrlOption,
    call,
    config_or_exit,
    console,
    err,
    events,
    footprint_text,
    server_running,
    server_url,
)
from modelyard.errors import ModelyardError
from modelyard.quantity import format_size

out = console()


class PullView:
    """Rich progress bars, one per file, with size, speed and time left."""

    def __init__(self) -> None:
        self._bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> PullView:
        self._bars.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._bars.stop()

    def update(self, event: dict[str, Any]) -> None:
        status, file = event.get("status"), event.get("file")
        if status == "resolving":
            self._bars.console.print("resolving …")
        if not file:
            return
        if file not in self._tasks:
            self._tasks[file] = self._bars.add_task(file, total=event.get("total") or None)
        task = self._tasks[file]
        description = f"{file} (verifying)" if status == "verifying" else file
        self._bars.update(task, completed=event.get("completed", 0), description=description)


def pull(
    model: Annotated[str, typer.Argument(help="owner/repo, owner/repo:QUANT or :file.gguf")],
    url: UrlOption = None,
) -> None:
    """Download a model from the Hugging Face hub into the models directory."""
    base = server_url(url)
    try:
        with PullView() as view:
            if server_running(base):
                result = _pull_through(base, model, view)
            else:
                result = _pull_here(model, view)
    except KeyboardInterrupt:
        err.print("stopped; pull again to resume")
        raise typer.Exit(130) from None
    if result["up_to_date"]:
        out.print(f"{result['model']} is up to date ({escape(result['path'])})")
    else:
        size = format_size(result["downloaded"])
        out.print(f"pulled {result['model']} ({size}) into {escape(result['path'])}")
    if "name" in result and result["name"] is None:
        out.print("the server does not serve this kind of model yet (see modelyard show)")
    else:
        out.print(f"use it as model {result['model']!r}")


def _pull_through(base: str, model: str, view: PullView) -> dict[str, Any]:
    """The server pulls; its progress events drive the bars here."""
    for event in events(base, "/api/pull", {"model": model}):
        if "error" in event:
            view.__exit__()
            err.print(f"[red]Pull failed:[/] {escape(event['error']['message'])}", soft_wrap=True)
            raise typer.Exit(1)
        if event.get("status") == "success":
            result: dict[str, Any] = event
            return result
        view.update(event)
    err.print("[red]The server ended the pull without a result[/]")
    raise typer.Exit(1)


def _pull_here(model: str, view: PullView) -> dict[str, Any]:
    from modelyard.hub.api import Hub
    from modelyard.hub.pull import pull as run_pull
    from modelyard.hub.ref import parse_reference

    config = config_or_exit()
    hub = Hub()
    try:
        result = run_pull(
            parse_reference(model),
            config.models_dir,
            hub,
            lambda p: view.update(asdict(p)),
        )
    except ModelyardError as exc:
        view.__exit__()
        err.print(f"[red]Pull failed:[/] {escape(exc.message)}", soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        hub.close()
    return {
        "model": result.reference,
        "path": str(result.path),
        "downloaded": result.downloaded,
        "up_to_date": result.up_to_date,
    }


def show(
    model: str,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """What a model is and how much memory it will take, without loading it."""
    base = server_url(url)
    if server_running(base):
        data = call(base, "POST", "/api/show", {"model": model})
    else:
        data = _show_here(model)
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in _rows(data):
        table.add_row(key, escape(value))
    out.print(table)


def _show_here(model: str) -> dict[str, Any]:
    from modelyard.catalog.catalog import Catalog
    from modelyard.catalog.summary import summarize
    from modelyard.engines import default_runners
    from modelyard.scheduler import estimate

    config = config_or_exit()
    try:
        spec = Catalog(config.models).get(model)
    except ModelyardError as exc:
        err.print(f"[red]Error:[/] {escape(exc.message)}")
        raise typer.Exit(1) from None
    runner = default_runners(config.home)[spec.engine]
    summary = summarize(spec, lambda: estimate(spec, runner), home=config.home)
    summary["state"] = "stopped (no server running)"
    return summary


def _rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [
        ("name", data["name"]),
        ("aliases", ", ".join(data["aliases"]) or "-"),
        ("kind", f"{data['kind']} ({', '.join(data['serves'])}) on {data['engine']}"),
        ("state", str(data["state"])),
    ]
    for key in ("architecture", "model_type", "quantization", "dtype"):
        if data.get(key):
            rows.append((key, str(data[key])))
    if data.get("parameter_count"):
        rows.append(("parameters", _count(data["parameter_count"])))
    for key in ("context_length", "embedding_length", "layers", "heads", "kv_heads"):
        if data.get(key) is not None:
            rows.append((key.replace("_", " "), str(data[key])))
    if data.get("format") == "gguf":
        rows.append(("chat template", data.get("chat_template") or "none"))
    if data.get("weights_size"):
        rows.append(("weights", format_size(data["weights_size"])))
    if "size" in data:
        rows.append(("size on disk", format_size(data["size"])))
    settings = ", ".join(f"{k} {v}" for k, v in data["settings"].items())
    rows.append(("settings", settings))
    memory = data["memory"]
    if memory.get("estimate"):
        text = footprint_text(memory["estimate"])
        parts = memory.get("parts") or {}
        if parts:  # what it counts: the heaviest the model gets
            text += (
                " ("
                + ", ".join(
                    f"{name.replace('_', ' ')} {format_size(n)}" for name, n in parts.items()
                )
                + ")"
            )
        rows.append(("memory estimate", text))
    if memory.get("measured"):
        rows.append(("memory measured", footprint_text(memory["measured"])))
    if memory.get("error"):
        rows.append(("memory estimate", memory["error"]))
    warm = data.get("warm_swaps")
    if warm is not None:
        if warm["on"]:
            saved = f"{warm['states']} conversation(s) saved"
            if warm["states"]:
                saved += f", {warm['tokens']} tokens ({format_size(warm['bytes'])})"
            rows.append(("warm swaps", f"on: {saved}"))
        else:
            rows.append(("warm swaps", f"off: {warm['why']}"))
    if "pulled" in data:
        pulled = data["pulled"]
        rows.append(("pulled", f"{pulled['reference']} @ {pulled['commit'][:12]}, {pulled['at']}"))
    rows.append(("path", data["path"] or "-"))
    if data.get("error"):
        rows.append(("error", data["error"]))
    rows += [("warning", warning) for warning in data.get("warnings") or []]
    return rows


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit} ({n:,})"
    return str(n)


def rm(
    model: str,
    force: Annotated[
        bool, typer.Option("--force", help="Unload the model first if it is loaded.")
    ] = False,
    url: UrlOption = None,
) -> None:
    """Delete a pulled model's files (refused while it is loaded, unless --force)."""
    base = server_url(url)
    if server_running(base):
        data = call(base, "DELETE", "/api/delete", {"model": model, "force": force}, timeout=120)
        deleted = data["deleted"]
        name = data["model"]
    else:
        from modelyard.catalog.catalog import Catalog
        from modelyard.engines import engine_of
        from modelyard.hub import store

        config = config_or_exit()
        try:
            spec = Catalog(config.models).get(model)
            deleted = [str(p) for p in store.remove(spec, config.models_dir)]
            deleted += [str(p) for p in engine_of(spec).forget(spec, config.home)]
        except ModelyardError as exc:
            err.print(f"[red]Error:[/] {escape(exc.message)}")
            raise typer.Exit(1) from None
        name = spec.name
    out.print(f"deleted {name} ({len(deleted)} file{'s' if len(deleted) != 1 else ''})")
