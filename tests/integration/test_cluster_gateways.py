"""Several gateways in front of a Ray cluster, for real: a Ray head at 127.0.0.2 started on
its own (as ``docs/cluster.md`` says to), two ``serve --gateways --cluster-address``
sharing a PostgreSQL server, and a node joined at 127.0.0.3 with ``modelyard join``; the
gateways' own machine has no room, so the Gemma runner runs on the node.

The follower serves the model from the node's runner with a lease from the leader; when the
leader is killed, the follower leads: it joins the Ray cluster itself, stops the runner the
old leader left on the node, and serves the model from a runner of its own there.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from modelyard.accounts.store import Store
from modelyard.cli.cluster import _temp_dir
from modelyard.cluster.ray_node import RayNode, start_head, token_env
from modelyard.runners.process import free_port
from tests.integration.conftest import Server, gemma, start_server
from tests.integration.raynodes import sweep, until
from tests.postgres import PostgresServer

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

HEAD, NODE = "127.0.0.2", "127.0.0.3"
_LIMIT = 240.0
"""Seconds a Ray node may take to start (up to three tries on a loaded machine)."""

CONFIG = (
    "[memory]\nmin_residency = 0\n\n"
    f'[models.chat]\npath = "{gemma()}"\nchat_template = "gemma"\nctx = 512\n'
    'memory = "800MiB"\nkeep_alive = "1h"\n'
)


@dataclass
class Setup:
    leader: Server
    follower: Server
    join: subprocess.Popen[bytes]
    tmp: Path


async def _token(url: str) -> str:
    import hashlib

    store = await Store.open(url)
    try:
        return hashlib.sha256((await store.secret("ray-token")).encode()).hexdigest()
    finally:
        await store.close()


@pytest.fixture(scope="module")
def setup(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("cluster-gateways")
    url = asyncio.run(postgres.new_database())
    token = asyncio.run(_token(url))
    dirs = [_temp_dir(tmp, HEAD), _temp_dir(tmp / "node", NODE)]
    head: RayNode | None = None
    servers: list[Server] = []
    join: subprocess.Popen[bytes] | None = None
    try:
        head = start_head(HEAD, free_port(HEAD), temp_dir=dirs[0], env=token_env(token))
        env: dict[str, str | None] = {"MODELYARD_DATABASE_URL": url, **token_env(token)}
        args = ["--gateways", "--cluster-address", head.address, "--cluster-ip", HEAD]
        args += ["--memory", "100MiB"]
        for name in ("a", "b"):
            servers.append(start_server(tmp / name, CONFIG, *args, env=env))
        leader, follower = servers
        until(lambda: _nodes(leader)["connected"], 120, lambda: leader.log.read_text()[-3000:])
        argv = [sys.executable, "-m", "modelyard", "join", head.address, "--ip", NODE]
        argv += ["--memory", "2GiB", "--home", str(tmp / "node"), "--token", token]
        log = tmp / "join.log"
        with log.open("wb") as out:
            join = subprocess.Popen(argv, env=leader.environ, stdout=out, stderr=subprocess.STDOUT)
        until(lambda: NODE in _alive(leader), _LIMIT, lambda: log.read_text()[-3000:])
        yield Setup(leader, follower, join, tmp)
    finally:
        if join is not None:
            join.send_signal(signal.SIGINT)
            try:
                join.wait(30)
            except subprocess.TimeoutExpired:
                join.kill()
                join.wait()
        for server in servers:
            server.stop()
        if head is not None:
            head.stop()
        left = sweep(dirs)
        assert not left, f"Ray processes left behind: {left}"


def _nodes(server: Server) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{server.url}/api/nodes", timeout=10).json()
    return answer


def _alive(server: Server) -> set[str]:
    return {n["name"] for n in _nodes(server)["nodes"] if n["state"] == "alive"}


def _chat(server: Server) -> httpx.Response:
    body = {"model": "chat", "messages": [{"role": "user", "content": "Hi"}]}
    body |= {"max_tokens": 4, "temperature": 0}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)


def _runner(server: Server) -> tuple[int, set[str]]:
    """The pid of the model's runner, and the nodes it holds memory on (asked of
    ``server``: a follower passes it on to the leader)."""
    (model,) = httpx.get(f"{server.url}/api/ps", timeout=10).json()["models"]
    return int(model["pid"]), set(model["memory"]["nodes"])


def test_a_follower_serves_from_a_nodes_runner_and_leads_when_the_leader_dies(
    setup: Setup,
) -> None:
    leader, follower = setup.leader, setup.follower
    assert _chat(follower).status_code == 200
    pid, nodes = _runner(follower)
    assert nodes == {NODE}
    assert psutil.Process(pid).is_running()

    leader.process.send_signal(signal.SIGKILL)
    leader.process.wait(10)
    took = until(
        lambda: _chat(follower).status_code == 200,
        120,
        lambda: follower.log.read_text()[-3000:],
    )
    print(f"\nleader killed: the follower served from the node again after {took:.1f}s")
    assert "this gateway leads now" in follower.log.read_text()
    moved, nodes = _runner(follower)
    assert nodes == {NODE}
    assert moved != pid
    until(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
        15,
        lambda: f"the old leader's runner {pid} still runs on the node",
    )
