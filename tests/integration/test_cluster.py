"""Scale-out on Ray, for real: ``serve --cluster`` on this machine, nodes joined with
``modelyard join``, each node a real Ray node on an address of its own (127.0.0.2 to .5:
Ray rewrites plain 127.0.0.1 to the host's outward address), real runners of the Gemma
GGUF started by each node's keeper and reached directly by the gateway.

The memory each model counts for is set in the catalog (``memory``), so that which node can
take which model is decided by the test, not by the machine.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from modelyard.cli.cluster import _temp_dir
from modelyard.runners.process import free_port
from tests.integration.conftest import Server, gemma, runner_pids, start_server
from tests.integration.raynodes import cmdline, ray_processes, sweep, until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

HEAD = "127.0.0.2"
"""The gateway's machine: the Ray head (its own budget takes no model here)."""
SMALL_NODE, LARGE_NODE, LATE_NODE = "127.0.0.3", "127.0.0.4", "127.0.0.5"
_JOIN_TIMEOUT = 240.0
"""``ray start`` takes 9 to 24 s on a loaded machine, and is tried up to three times."""


def _config() -> str:
    model = gemma()
    entries = [("big", "1.5GiB"), ("small", "800MiB"), ("third", "800MiB")]
    # No minimum residency: which runner is evicted depends on room alone.
    return "[memory]\nmin_residency = 0\n\n" + "".join(
        f'[models.{name}]\npath = "{model}"\nchat_template = "gemma"\nctx = 512\n'
        f'memory = "{memory}"\nkeep_alive = "1h"\n\n'
        for name, memory in entries
    )


@dataclass
class Joined:
    """A machine joined with ``modelyard join`` (a process of this test)."""

    ip: str
    process: subprocess.Popen[bytes]
    log: Path
    home: Path

    def leave(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _join(tmp: Path, server: Server, ip: str, memory: str) -> Joined:
    home = tmp / f"node-{ip}"
    home.mkdir()
    log = tmp / f"join-{ip}.log"
    argv = [sys.executable, "-m", "modelyard", "join", _head(server), "--ip", ip]
    argv += ["--memory", memory, "--home", str(home), "--token", token(server)]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=server.environ, stdout=out, stderr=subprocess.STDOUT)
    node = Joined(ip, process, log, home)
    until(
        lambda: ip in _alive(server),
        _JOIN_TIMEOUT,
        lambda: f"{ip} did not join:\n{log.read_text()[-3000:]}",
    )
    return node


def token(server: Server) -> str:
    """The cluster's token, from the join command ``serve --cluster`` printed."""
    found = re.search(r"modelyard join \S+ --token (\S+)", server.log.read_text())
    assert found, server.log.read_text()[-2000:]
    return found.group(1)


def _head(server: Server) -> str:
    return str(_nodes(server)["cluster"])


def _nodes(server: Server) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{server.url}/api/nodes", timeout=10).json()
    return answer


def _alive(server: Server) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in _nodes(server)["nodes"] if n["state"] == "alive"}


def _where(server: Server) -> dict[str, set[str]]:
    """The nodes each model's runners hold memory on."""
    models = httpx.get(f"{server.url}/api/ps", timeout=10).json()["models"]
    return {m["name"]: set(m["memory"]["nodes"]) for m in models}


def _chat(server: Server, model: str, max_tokens: int = 4) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
    body |= {"max_tokens": max_tokens, "temperature": 0}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)


@dataclass
class Cluster:
    server: Server
    nodes: dict[str, Joined]
    tmp: Path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    port = str(free_port(HEAD))
    args = ["--cluster", "--cluster-ip", HEAD, "--ray-port", port, "--memory", "100MiB"]
    server = start_server(tmp, _config(), *args, up_timeout=_JOIN_TIMEOUT)
    dirs = [_temp_dir(server.home, HEAD)]
    found = Cluster(server, {}, tmp)
    try:
        until(
            lambda: _nodes(server)["connected"],
            120,
            lambda: f"the gateway did not connect to Ray:\n{server.log.read_text()[-3000:]}",
        )
        for ip, memory in ((SMALL_NODE, "1GiB"), (LARGE_NODE, "2GiB")):
            found.nodes[ip] = _join(tmp, server, ip, memory)  # one at a time: Ray #65983
            dirs.append(_temp_dir(found.nodes[ip].home, ip))
        yield found
    finally:
        for node in found.nodes.values():
            node.leave()
        server.stop()
        dirs += [_temp_dir(n.home, ip) for ip, n in found.nodes.items()]
        left = sweep(dirs)
        assert not left, f"Ray processes left behind: {left}"


def test_each_model_lands_on_the_node_it_fits(cluster: Cluster) -> None:
    server = cluster.server
    alive = _alive(server)
    assert alive[SMALL_NODE]["budget"] == {"ram": 1 << 30}
    assert alive[LARGE_NODE]["budget"] == {"ram": 2 << 30}
    assert alive["local"]["budget"] == {"ram": 100 << 20}

    # 1.5 GiB fits only the large node; then 800 MiB fits only the small one.
    assert _chat(server, "big").status_code == 200
    assert _chat(server, "small").status_code == 200
    where = _where(server)
    assert where["big"] == {LARGE_NODE}
    assert where["small"] == {SMALL_NODE}

    # A runner's log is written on its node, and read from there.
    logged = httpx.get(f"{server.url}/api/logs/big", timeout=10).json()
    assert logged["path"] == f"{LARGE_NODE}:big"
    assert any("starting:" in line and f"--host {LARGE_NODE}" in line for line in logged["lines"])

    nodes = _alive(server)
    assert nodes[LARGE_NODE]["models"] == ["big"]
    assert nodes[SMALL_NODE]["models"] == ["small"]
    assert nodes[LARGE_NODE]["reserved"] == {"ram": 1536 << 20}
    listed = subprocess.run(
        [sys.executable, "-m", "modelyard", "nodes", "--url", server.url],
        capture_output=True,
        text=True,
        timeout=60,
        env=server.environ,
        check=True,
    ).stdout
    rows = {line.split()[0]: line for line in listed.splitlines()[1:] if line.strip()}
    assert "big" in rows[LARGE_NODE]
    assert "small" in rows[SMALL_NODE]
    assert "alive" in rows[LARGE_NODE]


def test_the_web_page_shows_each_nodes_memory_and_where_models_run(cluster: Cluster) -> None:
    from playwright.sync_api import sync_playwright

    from tests.e2e.conftest import ARGS, CHROMIUM

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{cluster.server.url}/ui/#/models")
            nodes = page.locator("section.nodes .node")
            nodes.first.wait_for(timeout=15000)
            names = sorted(nodes.locator("strong").all_inner_texts())
            assert names == sorted(["local", SMALL_NODE, LARGE_NODE])
            large = page.locator(f'.node[data-node="{LARGE_NODE}"]')
            assert large.locator('.bar[data-device="ram"]').count() == 1
            assert "1.5 GiB of 2.0 GiB in use" in large.inner_text()
            big = page.locator('tr[data-model="big"]')
            assert big.locator("[data-nodes]").inner_text() == f"on {LARGE_NODE}"
            assert errors == []
        finally:
            browser.close()


def test_room_is_made_on_the_node_that_is_short(cluster: Cluster) -> None:
    server = cluster.server
    # 800 MiB fits nowhere now: evicting ``small`` (one model, 800 MiB) makes room on the
    # small node; evicting ``big`` would free more than needed.
    assert _chat(server, "third").status_code == 200
    where = _where(server)
    assert where["third"] == {SMALL_NODE}, _told(server)
    assert where["big"] == {LARGE_NODE}
    assert "small" not in where  # /api/ps lists loaded models only
    events = httpx.get(f"{server.url}/api/events", timeout=10).json()["events"]
    evictions = [e for e in events if e["type"] == "evicted"]
    assert [(e["model"], e["node"], e["for_model"]) for e in evictions] == [
        ("small", SMALL_NODE, "third")
    ]


def test_a_killed_node_fails_only_its_streams_and_its_models_load_elsewhere(
    cluster: Cluster,
) -> None:
    server = cluster.server
    victim = SMALL_NODE
    (runner,) = [p for p in runner_pids() if f"--host {victim}" in cmdline(p)]
    # Four streams to the victim's model, and one to the large node's, all under way.
    streams = [_stream(server, "third") for _ in range(4)] + [_stream(server, "big")]
    for stream in streams:
        stream.first_chunk()

    raylets = ray_processes([_temp_dir(cluster.nodes[victim].home, victim)])
    (raylet,) = [p for p in raylets if p.name() == "raylet"]
    raylet.kill()
    killed = time.monotonic()

    for stream in streams[:4]:
        ending = stream.ending(timeout=30)
        assert "error" in ending, ending
    failed = time.monotonic() - killed
    answer = _chat(server, "third")
    served = time.monotonic() - killed
    assert "error" not in streams[4].ending(timeout=120)  # the other node's stream
    assert answer.status_code == 200, answer.text
    assert _where(server)["third"] == {LARGE_NODE}
    assert not psutil.pid_exists(runner) or psutil.Process(runner).status() == "zombie"
    nodes = {n["name"]: n for n in _nodes(server)["nodes"]}
    assert nodes[victim]["state"] == "lost"
    lost = [
        e
        for e in httpx.get(f"{server.url}/api/events", timeout=10).json()["events"]
        if e["type"] == "node_lost"
    ]
    assert [(e["node"], e["models"]) for e in lost] == [(victim, ["third"])]
    print(f"\nkilled node: its streams failed within {failed:.1f}s, its model served again")
    print(f"from another node {served:.1f}s after the kill (a cold load included)")


def test_a_node_that_joins_gets_the_next_placement(cluster: Cluster) -> None:
    server = cluster.server
    start = time.monotonic()
    cluster.nodes[LATE_NODE] = _join(cluster.tmp, server, LATE_NODE, "4GiB")
    joined = time.monotonic() - start
    # ``big`` was evicted for ``third`` on the large node; the new node has room for it.
    assert _chat(server, "big").status_code == 200
    placed = time.monotonic() - start
    where = _where(server)
    assert where["big"] == {LATE_NODE}
    assert where["third"] == {LARGE_NODE}
    print(f"\njoin: listed after {joined:.1f}s, first placement served after {placed:.1f}s")


def test_a_node_that_leaves_stops_its_runners(cluster: Cluster) -> None:
    server = cluster.server
    node = cluster.nodes[LATE_NODE]
    before = {p for p in runner_pids() if f"--host {LATE_NODE}" in cmdline(p)}
    assert before
    node.leave()
    assert node.process.returncode == 0, node.log.read_text()[-2000:]
    until(
        lambda: LATE_NODE not in _alive(server),
        15,
        lambda: json.dumps(_nodes(server), indent=1),
    )
    assert {n["name"]: n for n in _nodes(server)["nodes"]}[LATE_NODE]["error"] == "it left"
    assert not before & runner_pids()
    assert "big" not in _where(server)


def _told(server: Server) -> str:
    """The event log, to explain a failure."""
    events = httpx.get(f"{server.url}/api/events", timeout=10).json()["events"]
    return "\n".join(f"{e['type']} {e['model']} {e['node']} {e['message']}" for e in events)


def test_a_machine_without_the_token_cannot_join(cluster: Cluster) -> None:
    server = cluster.server
    home = cluster.tmp / "intruder"
    home.mkdir()
    argv = [sys.executable, "-m", "modelyard", "join", _head(server), "--ip", LATE_NODE]
    try:
        joined = subprocess.run(
            [*argv, "--home", str(home)],
            env={k: v for k, v in server.environ.items() if not k.startswith("RAY_")},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert joined.returncode == 1
        assert "refuses this node: its token is missing or wrong" in joined.stderr
        assert LATE_NODE not in _alive(server)
    finally:
        shutil.rmtree(_temp_dir(home, LATE_NODE), ignore_errors=True)


class _Stream:
    """A streamed chat request read in a thread of its own."""

    def __init__(self, server: Server, model: str) -> None:
        import threading

        self.chunks: list[str] = []
        self.first = threading.Event()
        self.done = threading.Event()
        body = {"model": model, "messages": [{"role": "user", "content": "Tell a story"}]}
        body |= {"max_tokens": 400, "stream": True}
        self._thread = threading.Thread(target=self._read, args=(server, body), daemon=True)
        self._thread.start()

    def _read(self, server: Server, body: dict[str, Any]) -> None:
        try:
            with httpx.stream(
                "POST", f"{server.url}/v1/chat/completions", json=body, timeout=120
            ) as answer:
                for line in answer.iter_lines():
                    if line.startswith("data: "):
                        self.chunks.append(line)
                        self.first.set()
        except httpx.HTTPError as exc:
            self.chunks.append(f"error: {exc!r}")
        finally:
            self.first.set()
            self.done.set()

    def first_chunk(self) -> None:
        assert self.first.wait(120), "no chunk came"

    def ending(self, timeout: float) -> str:
        assert self.done.wait(timeout), f"the stream did not end in {timeout}s"
        return "\n".join(self.chunks[-3:])


def _stream(server: Server, model: str) -> _Stream:
    return _Stream(server, model)
