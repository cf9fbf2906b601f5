"""``modelyard serve | run | ls | ps | load | unload | pull | show | rm | logs | events |
join | nodes | keys | users | usage | login | backup | restore``."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from modelyard.cli import accounts, chat, cluster, models, observe
from modelyard.cli.client import (
    JsonOption,
    UrlOption,
    call,
    config_or_exit,
    console,
    err,
    footprint_text,
    relative,
    server_url,
)
from modelyard.cli.cluster import prepare as cluster_prepare

app = typer.Typer(
    help="One OpenAI-compatible endpoint for all your local models.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = console()


def _version(value: bool) -> None:
    if value:
        from modelyard import __version__

        out.print(f"modelyard {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """One OpenAI-compatible endpoint for all your local models."""


class LogFormat(StrEnum):
    text = "text"
    json = "json"


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="modelyard.toml to use.")
    ] = None,
    models_dir: Annotated[
        Path | None,
        typer.Option(
            help="Directory scanned for models: *.gguf files and Hugging Face model directories."
        ),
    ] = None,
    memory: Annotated[
        str | None, typer.Option("--memory", help="RAM budget: bytes, '16GiB' or '75%'.")
    ] = None,
    log_format: Annotated[
        LogFormat | None,
        typer.Option("--log-format", help="json: one object per line, with the request id."),
    ] = None,
    no_demo: Annotated[
        bool, typer.Option("--no-demo", help="Serve no demo models (as demo = false).")
    ] = False,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster", help="Start a Ray head here: other machines join it (modelyard join)."
        ),
    ] = False,
    cluster_address: Annotated[
        str | None,
        typer.Option(
            "--cluster-address", help="Serve on the Ray cluster whose head runs here at IP:PORT."
        ),
    ] = None,
    cluster_ip: Annotated[
        str | None,
        typer.Option("--cluster-ip", help="This machine's address the cluster's nodes reach."),
    ] = None,
    ray_port: Annotated[
        int, typer.Option("--ray-port", help="The Ray head's port (with --cluster).")
    ] = 6380,
    gateways: Annotated[
        bool,
        typer.Option(
            "--gateways",
            help="One of several gateways sharing the accounts' PostgreSQL (one leads).",
        ),
    ] = False,
    advertise: Annotated[
        str | None,
        typer.Option("--advertise", help="With --gateways: the URL the others reach this at."),
    ] = None,
) -> None:
    """Start the server: the demo models, modelyard.toml's and the models directory's."""
    from modelyard.config import Settings
    from modelyard.quantity import parse_size

    if memory is not None:
        try:
            parse_size(memory, total=1)
        except ValueError as exc:
            err.print(f"[red]--memory:[/] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(2) from None
    if models_dir is not None and not models_dir.expanduser().is_dir():
        err.print(
            f"[red]--models-dir:[/] no such directory: {escape(str(models_dir))}", soft_wrap=True
        )
        raise typer.Exit(2)

    overrides: dict[str, Any] = {
        "host": host,
        "port": port,
        "config": config,
        "models_dir": models_dir,
        "ram_budget": memory,
        "log_format": log_format.value if log_format else None,
        "demo": False if no_demo else None,
        "gateways": True if gateways else None,
        "advertise": advertise,
    }
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    cfg = config_or_exit(settings)
    busy = _port_in_use(cfg.host, cfg.port)
    if busy:
        err.print(
            f"[red]modelyard: cannot listen on {cfg.host}:{cfg.port}:[/] {busy} "
            "(another modelyard?). Choose another port with --port.",
            soft_wrap=True,
        )
        raise typer.Exit(1)
    if cfg.gateways:
        from modelyard.cluster.election import advertised, dsn_of
        from modelyard.config import database_url
        from modelyard.errors import ConfigError

        try:
            dsn_of(database_url(cfg))
            advertised(cfg)
        except ConfigError as exc:
            err.print(f"[red]modelyard:[/] {escape(exc.message)}", soft_wrap=True)
            raise typer.Exit(2) from None
    names = ", ".join(s.name for s in cfg.models) or "(none)"
    err.print(f"modelyard: {len(cfg.models)} model(s): {names}")
    settings, head = cluster_prepare(
        settings, cfg, start=cluster, address=cluster_address, ip=cluster_ip, ray_port=ray_port
    )
    if head is not None or cluster_address:
        cfg = config_or_exit(settings)
    err.print(f"modelyard: OpenAI endpoint at http://{cfg.host}:{cfg.port}/v1")
    from modelyard.server import serve as run_server  # the server's stack: only to serve

    try:
        run_server(cfg, settings)
    finally:
        if head is not None:
            head.stop()


def _port_in_use(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on now, or ``None`` when it can."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return f"cannot resolve {host}: {exc.strerror or exc}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


@app.command("ls")
def list_models(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """List the catalog: every model the server can serve."""
    data = call(server_url(url), "GET", "/api/models")
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table(box=None)
    for column in ("NAME", "KIND", "STATE", "CTX", "ESTIMATE", "ALIASES", "PATH"):
        table.add_column(column, overflow="fold")  # never cut: names are typed back
    for m in data["models"]:
        table.add_row(
            m["name"],
            m["kind"],
            m["state"],
            str(m["ctx"]),
            footprint_text(m["memory"]["estimate"]),
            ", ".join(m["aliases"]),
            m["path"] or m.get("url") or " ".join(m.get("command") or []) or "-",
        )
    out.print(table)
    for m in data["models"]:
        for warning in m.get("warnings") or []:
            err.print(f"[yellow]warning:[/] {escape(m['name'])}: {escape(warning)}", soft_wrap=True)
    if data.get("reload_error"):
        err.print("[yellow]The config on disk did not load; serving the last good catalog:[/]")
        err.print(data["reload_error"], markup=False, soft_wrap=True)


@app.command()
def ps(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Show loaded models: state, memory, queue and in-flight requests."""
    data = call(server_url(url), "GET", "/api/ps")
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table(box=None)
    for column in ("NAME", "STATE", "MEMORY", "IN FLIGHT", "QUEUED", "SINCE", "EXPIRES"):
        table.add_column(column, overflow="fold")
    for m in data["models"]:
        memory = footprint_text(m["memory"]["measured"] or m["memory"]["estimate"])
        if m["memory"].get("prompt_cache"):
            memory += f" (cache {footprint_text({'ram': m['memory']['prompt_cache']})})"
        replicas = m.get("replicas") or []
        if replicas:
            memory += f" each, {len(replicas)} replica{'s' if len(replicas) > 1 else ''}"
        table.add_row(
            m["name"],
            m["state"]
            + (" (remote)" if m.get("engine") == "remote" else "")
            + (" (removed)" if m.get("removed") else ""),
            memory,
            f"{m['in_flight']}/{m['parallel']}",
            str(m["queued"]),
            relative(m["loaded_since"]) or "-",
            relative(m["expires_at"])
            or ("never" if m["state"] == "ready" and not m["in_flight"] else "-"),
        )
        for r in replicas:
            table.add_row(
                f"  {m['name']}@{r['index']}",
                r["state"],
                "",
                f"{r['in_flight']}/{m['parallel']}",
                "",
                relative(r["loaded_since"]) or "-",
                relative(r["expires_at"]) or "-",
            )
    out.print(table)
    mem = data["memory"]
    reserved, budget = footprint_text(mem["reserved"]), footprint_text(mem["budget"])
    out.print(f"RAM: {reserved} of {budget} budget in use")
    nodes = mem.get("nodes") or {}
    if len(nodes) > 1:  # a cluster: each node's too
        for name, node in nodes.items():
            used, own = footprint_text(node["reserved"]), footprint_text(node["budget"])
            out.print(f"  {name}: {used} of {own}")


@app.command()
def load(
    model: str,
    keep_alive: Annotated[
        str | None, typer.Option(help="How long to keep it loaded: '10m', '-1' forever.")
    ] = None,
    url: UrlOption = None,
) -> None:
    """Load a model now and wait until it is ready."""
    body: dict[str, Any] = {"model": model}
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    data = call(server_url(url), "POST", "/api/load", body, timeout=900)
    out.print(f"{data['model']}: {data['state']}")


@app.command()
def unload(model: str, url: UrlOption = None) -> None:
    """Unload a model (after its in-flight requests finish)."""
    data = call(server_url(url), "POST", "/api/unload", {"model": model}, timeout=120)
    out.print(f"{data['model']}: {data['state']}")


app.command()(chat.run)
app.command()(models.pull)
app.command()(models.show)
app.command()(models.rm)
app.command()(observe.logs)
app.command("events")(observe.events_command)
app.command()(cluster.join)
app.command()(cluster.nodes)
app.add_typer(accounts.keys, name="keys")
app.add_typer(accounts.users, name="users")
app.command()(accounts.usage)
app.command()(accounts.login)
app.command()(accounts.backup)
app.command()(accounts.restore)
