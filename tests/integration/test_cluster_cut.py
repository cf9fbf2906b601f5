"""A node cut off from the cluster, for real: three network namespaces on a bridge (the
gateway and Ray head in the first, a node in each other), the node's link taken down while a
request streams from its runner. The gateway must notice within seconds, end that stream, and
serve the model from the other node; the cut-off node must stop its own runners (fencing).
Keys are required, as on a shared server: balances, the ledger and metrics work as on one
machine."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from modelyard.cli.cluster import _temp_dir
from tests.integration.conftest import _spawn, gemma, runner_pids
from tests.integration.netns import Inside, Network
from tests.integration.raynodes import cmdline, sweep, until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

_LIMIT = 240.0
"""Seconds a Ray node may take to start (up to three tries on a loaded machine)."""
FENCE = 10.0
"""The keeper's fencing bound (``cluster.keeper.FENCE_AFTER``)."""


@dataclass
class Cut:
    network: Network
    inside: Inside
    url: str
    gateway: subprocess.Popen[bytes]
    joins: dict[int, subprocess.Popen[bytes]]
    tmp: Path
    admin: dict[str, str] = field(default_factory=dict)
    """An admin's ``Authorization`` header."""


@pytest.fixture(scope="module")
def cut(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cut]:
    if os.geteuid() != 0:
        pytest.fail("network namespaces need root (CI runs as root)")
    tmp = tmp_path_factory.mktemp("cut")
    network = Network(3)
    network.down()  # what a killed run of this test left
    network.up()
    inside = Inside(network, 1)
    config = tmp / "modelyard.toml"
    config.write_text(
        "[memory]\nmin_residency = 0\n\n"
        f'[models.chat]\npath = "{gemma()}"\nchat_template = "gemma"\nctx = 512\n'
        'memory = "800MiB"\nkeep_alive = "1h"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env |= {"MODELYARD_HOME": str(tmp / "home"), "MODELYARD_DEMO": "false"}
    env |= {"MODELYARD_AUTH": "keys"}
    head = network.address(1)
    argv = [sys.executable, "-m", "modelyard", "serve", "-c", str(config), "--port", "8000"]
    argv += ["--memory", "100MiB", "--cluster", "--cluster-ip", head]
    gateway = _spawn(network.argv(1, argv), None, env, tmp / "gateway.log")
    found = Cut(network, inside, "http://127.0.0.1:8000", gateway, {}, tmp)
    homes = [tmp / "home"]
    try:

        def connected() -> bool:
            said = (tmp / "gateway.log").read_text().splitlines()
            printed = [line.strip() for line in said if line.strip().startswith("my-")]
            if not printed:
                return False  # the admin key is printed once the accounts are ready
            found.admin = {"Authorization": f"Bearer {printed[0]}"}
            return bool(_get(found, "/api/nodes")["connected"])

        until(connected, _LIMIT, lambda: (tmp / "gateway.log").read_text()[-3000:])

        def token() -> str:
            found = re.search(r"--token (\S+)", (tmp / "gateway.log").read_text())
            assert found
            return found.group(1)

        for i, memory in ((2, "2GiB"), (3, "1GiB")):  # one at a time (Ray issue #65983)
            home = tmp / f"node{i}"
            homes.append(home)
            join = [sys.executable, "-m", "modelyard", "join", f"{head}:6380", "--token", token()]
            join += ["--ip", network.address(i), "--memory", memory, "--home", str(home)]
            log = tmp / f"join{i}.log"
            found.joins[i] = _spawn(network.argv(i, join), None, env, log)
            until(
                lambda i=i: network.address(i) in _alive(found),
                _LIMIT,
                lambda log=log: log.read_text()[-3000:],
            )
        yield found
    finally:
        for join in found.joins.values():
            join.send_signal(signal.SIGINT)
        for join in found.joins.values():
            try:
                join.wait(30)
            except subprocess.TimeoutExpired:
                join.kill()  # its Ray node dies with it (a lifeline)
                join.wait()
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(60)
        except subprocess.TimeoutExpired:
            gateway.kill()
        inside.close()
        left = sweep([_temp_dir(h, network.address(i)) for i, h in enumerate(homes, 1)])
        network.down()
        assert not left, f"Ray processes left behind: {left}"


def _get(cut: Cut, path: str) -> Any:
    """An admin's GET, from inside the gateway's namespace."""
    answer = cut.inside.call(httpx.get, f"{cut.url}{path}", headers=cut.admin, timeout=5)
    answer.raise_for_status()
    return answer.json() if "json" in answer.headers["content-type"] else answer.text


def _nodes(cut: Cut) -> dict[str, Any]:
    found: dict[str, Any] = _get(cut, "/api/nodes")
    return found


def _alive(cut: Cut) -> set[str]:
    return {n["name"] for n in _nodes(cut)["nodes"] if n["state"] == "alive"}


def _where(cut: Cut) -> list[str]:
    models = _get(cut, "/api/ps")["models"]
    return [node for m in models if m["name"] == "chat" for node in m["memory"]["nodes"]]


def _chat(url: str, key: str | None, max_tokens: int, stream: bool = False) -> str:
    body = {"model": "chat", "messages": [{"role": "user", "content": "Tell a story"}]}
    body |= {"max_tokens": max_tokens, "stream": stream, "temperature": 0}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)
    except httpx.HTTPError as exc:
        return f"error: {exc!r}"
    return f"{answer.status_code} {answer.text}"


def test_a_cut_off_node_is_noticed_its_stream_ends_and_its_runner_is_fenced(cut: Cut) -> None:
    near, far = cut.network.address(2), cut.network.address(3)
    made = cut.inside.call(
        httpx.post,
        f"{cut.url}/api/keys",
        json={"name": "payer", "balance": 10**6},
        headers=cut.admin,
        timeout=10,
    )
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    assert cut.inside.call(_chat, cut.url, None, 4).startswith("401 ")
    first = cut.inside.call(_chat, cut.url, key, 4)
    assert first.startswith("200 "), first
    assert _where(cut) == [near]  # the node with the most room
    _charged(cut, first, 10**6)
    (runner,) = [p for p in runner_pids() if f"--host {near}" in cmdline(p)]

    streaming = cut.inside.start(_chat, cut.url, key, 2000, True)
    time.sleep(1.0)  # under way
    cut.network.cut(2)
    start = time.monotonic()

    ended = streaming.result(timeout=60)
    stream_ended = time.monotonic() - start
    assert "error" in ended[-400:], ended[-400:]
    until(lambda: near not in _alive(cut), 30, lambda: str(_nodes(cut)))
    noticed = time.monotonic() - start

    before = _balance(cut)
    answer = cut.inside.call(_chat, cut.url, key, 4)
    served = time.monotonic() - start
    assert answer.startswith("200 "), answer
    assert _where(cut) == [far]
    _charged(cut, answer, before)
    metrics = _get(cut, "/metrics")
    assert any(
        line.startswith("modelyard_requests_total{") and 'model="chat"' in line
        for line in metrics.splitlines()
    )

    until(
        lambda: not psutil.pid_exists(runner) or psutil.Process(runner).status() == "zombie",
        FENCE + 15,
        lambda: f"the cut-off node's runner {runner} still runs",
    )
    fenced = time.monotonic() - start
    print(
        f"\ncut: stream ended after {stream_ended:.1f}s, node lost after {noticed:.1f}s, "
        f"served from the other node after {served:.1f}s, the cut-off node's runner gone "
        f"after {fenced:.1f}s"
    )
    assert noticed < 15


def _balance(cut: Cut) -> int:
    (payer,) = [k for k in _get(cut, "/api/keys")["keys"] if k["name"] == "payer"]
    return int(payer["balance"])


def _charged(cut: Cut, answer: str, before: int) -> None:
    """The answer's tokens were taken from the key's balance and written to the ledger."""
    usage = json.loads(answer.split(" ", 1)[1])["usage"]
    assert _balance(cut) == before - usage["total_tokens"]
    (row,) = _get(cut, "/api/usage?key=payer&limit=1")["rows"]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
