"""``modelyard join`` and ``modelyard nodes``, and the Ray head of ``serve --cluster``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from modelyard.cli.client import (
    JsonOption,
    UrlOption,
    call,
    console,
    err,
    footprint_text,
    relative,
    server_url,
)

if TYPE_CHECKING:
    from modelyard.cluster.ray_node import RayNode
    from modelyard.config import Config, Settings

out = console()

_LEAVE_GRACE = 5.0
"""Seconds each runner gets to finish when its node leaves."""
_LEAVE_TOLD = 2.0
"""Seconds a leaving node stays for the gateway to hear it left."""

IpOption = Annotated[
    str | None,
    typer.Option(
        "--ip",
        help="This machine's address the other nodes reach (default: the one its default "
        "route goes out of).",
    ),
]


def outward_ip() -> str:
    """The address this machine's default route goes out of (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.254.254.254", 1))
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def prepare(
    settings: Settings,
    config: Config,
    *,
    start: bool,
    address: str | None,
    ip: str | None,
    ray_port: int,
) -> tuple[Settings, RayNode | None]:
    """``serve --cluster``: starts this machine's Ray head (``start``), or serves on the one
    at ``address``; the settings to serve with, and the head started, if one."""
    if not start and not address:
        return settings, None
    head = None
    if address is None:
        from modelyard.cluster.ray_node import ClusterError, start_head, token_env

        ip = ip or outward_ip()
        token = cluster_token(config)
        os.environ.update(token_env(token))  # this gateway, a Ray driver, holds it too
        err.print(f"modelyard: starting the Ray head at {ip}:{ray_port} (this takes a while) ...")
        try:
            head = start_head(
                ip, ray_port, temp_dir=_temp_dir(config.home, ip), env=token_env(token)
            )
        except ClusterError as exc:
            err.print(f"[red]modelyard: {escape(exc.message)}[/]", soft_wrap=True)
            raise typer.Exit(1) from None
        address = head.address
        err.print(
            f"modelyard: other machines join with: modelyard join {address} --token {token}",
            soft_wrap=True,
        )
    update = {"cluster": address, "cluster_ip": ip or outward_ip()}
    return settings.model_copy(update=update), head


def cluster_token(config: Config) -> str:
    """The cluster's Ray token: made once, kept with the accounts' secrets."""
    from modelyard.accounts.store import Store
    from modelyard.config import database_url

    async def read() -> str:
        store = await Store.open(database_url(config))
        try:
            return await store.secret("ray-token")
        finally:
            await store.close()

    # In hex: a token that began with "-" would read as a flag on join's command line.
    return hashlib.sha256(asyncio.run(read()).encode()).hexdigest()


def _temp_dir(home: Path, ip: str) -> Path:
    """Ray's directory for this node: short (its socket paths must stay under 108 bytes),
    and one per node, should several run on one machine."""
    digest = hashlib.sha256(f"{home}\0{ip}".encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"modelyard-ray-{digest}"


def join(
    head: Annotated[str, typer.Argument(help="The head's address, as serve --cluster printed.")],
    ip: IpOption = None,
    name: Annotated[
        str | None, typer.Option(help="The node's name (default: its address).")
    ] = None,
    memory: Annotated[
        str, typer.Option("--memory", help="RAM runners may take here: bytes, '16GiB' or '75%'.")
    ] = "90%",
    gpu: Annotated[str, typer.Option("--gpu", help="Of each GPU here: bytes or a share.")] = "90%",
    home: Annotated[
        Path | None, typer.Option(help="Where runners' logs and caches go on this machine.")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="MODELYARD_CLUSTER_TOKEN",
            help="The cluster's token, as serve --cluster printed it.",
        ),
    ] = None,
) -> None:
    """Make this machine a node of a cluster: its models' runners start here as the
    gateway places them. Runs until stopped (Ctrl-C), then the node leaves."""
    from modelyard.cluster.keeper import NAMESPACE, Keeper, NodeInfo, keeper_name
    from modelyard.cluster.ray_node import ClusterError, start_worker, token_env
    from modelyard.config import Settings
    from modelyard.quantity import parse_size

    for flag, value in (("--memory", memory), ("--gpu", gpu)):
        try:
            parse_size(value, total=1)
        except ValueError as exc:
            err.print(f"[red]{flag}:[/] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(2) from None
    address = ip or outward_ip()
    where = (home or Settings().data_home()).expanduser()
    err.print(f"modelyard: joining {head} as {address} ...")
    os.environ.update(token_env(token))  # for this process too: it connects to the head
    try:
        node = start_worker(head, address, temp_dir=_temp_dir(where, address), env=token_env(token))
    except ClusterError as exc:
        err.print(f"[red]modelyard: {escape(exc.message)}[/]", soft_wrap=True)
        raise typer.Exit(1) from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray.init(address=head, namespace=NAMESPACE, _node_ip_address=address, log_to_driver=False)
        here = ray.get_runtime_context().get_node_id()
        actor: Any = ray.remote(num_cpus=0, max_restarts=0)(Keeper)
        keeper = actor.options(
            name=keeper_name(here),
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
        ).remote(name=name or address, ip=address, home=str(where), ram=memory, gpu=gpu)
        info: NodeInfo = ray.get(keeper.describe.remote(), timeout=120)
        err.print(
            f"modelyard: node {info.name} joined ({footprint_text(dict(info.budget))}); "
            "Ctrl-C to leave"
        )
        while not stop.wait(1.0):
            if not node.alive:
                err.print("[red]modelyard: the Ray node exited[/]")
                raise typer.Exit(1)
        err.print("modelyard: leaving: stopping this node's runners ...")
        with contextlib.suppress(Exception):
            ray.get(keeper.leave.remote(_LEAVE_GRACE), timeout=_LEAVE_GRACE + 10)
            time.sleep(_LEAVE_TOLD)  # the gateway's next beat hears it
    finally:
        with contextlib.suppress(Exception):
            import ray

            ray.shutdown()
        node.stop()


def nodes(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """List the nodes that serve models: budgets, use, models, health."""
    data = call(server_url(url), "GET", "/api/nodes")
    if as_json:
        out.print_json(json.dumps(data))
        return
    if data.get("error"):
        err.print(f"[red]cluster:[/] {escape(data['error'])}", soft_wrap=True)
    table = Table(box=None)
    for column in ("NAME", "ADDRESS", "STATE", "USED", "BUDGET", "MODELS", "LAST SEEN"):
        table.add_column(column, overflow="fold")
    for n in data["nodes"]:
        table.add_row(
            n["name"],
            n["address"] or "-",
            n["state"] + (f" ({n['error']})" if n["error"] else ""),
            footprint_text(n["reserved"]) if n["reserved"] else "-",
            footprint_text(n["budget"]) if n["budget"] else "-",
            ", ".join(n["models"]) or "-",
            relative(n["last_seen"]) or "-",
        )
    out.print(table)
