"""Observability with the real server and the demo model: a real Prometheus scrapes it,
promtool checks the exposition, logs rotate and follow, JSON logs, the CLI's logs/events."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Server, gemma

pytestmark = pytest.mark.integration

PROMPT = "Zebra-umbrella-4417 is the secret word"
"""A prompt no log may contain."""


def config(extra_server: str = "") -> str:
    return (
        f"[server]\n{extra_server}\n"
        f'[models.m]\npath = "{gemma()}"\nchat_template = "gemma"\nctx = 512\nparallel = 1\n'
    )


def chat(server: Server, content: str = PROMPT, **body: object) -> httpx.Response:
    message = {"role": "user", "content": content}
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "m", "messages": [message], "max_tokens": 4, **body},
        timeout=120,
    )


def cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelyard", *args, "--url", server.url],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def json_server(server_factory: Callable[..., Server]) -> Server:
    return server_factory(config('log_format = "json"\nlog_max_size = "2KiB"\nlog_files = 2'))


@pytest.mark.slow
def test_metrics_pass_promtool_and_a_real_prometheus_scrape(json_server: Server) -> None:
    server = json_server
    assert chat(server).status_code == 200
    assert chat(server, stream=True).status_code == 200
    exposition = httpx.get(f"{server.url}/metrics").text
    assert 'llamacpp_prompt_tokens_total{model="m"}' in exposition  # the engine's, merged
    checked = subprocess.run(
        [_binary("promtool"), "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with _prometheus(server.url) as prometheus:
        result = _query(prometheus, 'modelyard_requests_total{model="m"}')
        (series,) = [r for r in result if r["metric"]["status"] == "200"]
        assert series["metric"]["route"] == "/v1/chat/completions"
        assert float(series["value"][1]) == 2
        (loads,) = _query(prometheus, 'modelyard_model_loads_total{model="m"}')
        assert (loads["metric"]["outcome"], float(loads["value"][1])) == ("ok", 1)
        (tokens,) = _query(prometheus, 'modelyard_tokens_total{model="m",type="completion"}')
        assert float(tokens["value"][1]) > 0
        (engine,) = _query(prometheus, 'llamacpp_tokens_predicted_total{model="m"}')
        assert float(engine["value"][1]) == float(tokens["value"][1])


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    """The series of ``expr`` once Prometheus has scraped them (within a minute)."""
    deadline = time.monotonic() + 60
    while True:
        response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5)
        result: list[dict[str, Any]] = response.json()["data"]["result"]
        if result:
            return result
        assert time.monotonic() < deadline, f"Prometheus never scraped {expr}"
        time.sleep(0.5)


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: .ci/run installs Debian's prometheus package")
    return path


class _prometheus:
    """A Prometheus server scraping ``target`` every second, in a temporary directory."""

    def __init__(self, target: str) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="prometheus-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        host = target.removeprefix("http://")
        (self._dir / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n"
            f"scrape_configs:\n  - job_name: modelyard\n    static_configs:\n"
            f"      - targets: ['{host}']\n"
        )
        with (self._dir / "prometheus.log").open("wb") as log:
            self._process = subprocess.Popen(
                [
                    _binary("prometheus"),
                    f"--config.file={self._dir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self._dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError("prometheus did not start")

    def __exit__(self, *exc: object) -> None:
        self._process.terminate()
        self._process.wait(15)
        shutil.rmtree(self._dir, ignore_errors=True)


def test_logs_are_json_rotate_within_the_cap_and_never_hold_a_prompt(
    json_server: Server,
) -> None:
    server = json_server
    for i in range(12):
        assert chat(server, f"{PROMPT} {i}").status_code == 200
    logs = server.home / "logs"
    gateway = [line for p in logs.glob("gateway.log*") for line in p.read_text().splitlines()]
    records = [json.loads(line) for line in gateway]  # every line is one JSON object
    access = [r for r in records if r["logger"] == "modelyard.access"]
    assert access
    assert all(r["request_id"] and r["access"]["model"] == "m" for r in access)
    assert {r["access"]["status"] for r in access} == {200}
    runner_logs = sorted(p.name for p in logs.glob("m.log*"))
    assert runner_logs == ["m.log", "m.log.1", "m.log.2"]  # rotated, two kept
    for path in logs.glob("*.log*"):
        assert path.stat().st_size <= 2 * 1024 + 4096, path  # the cap, plus one last write
    for path in logs.iterdir():
        assert "Zebra-umbrella" not in path.read_text(errors="replace"), path


def test_logs_follow_sees_a_real_runner_write(json_server: Server) -> None:
    server = json_server
    lines: list[str] = []
    done = threading.Event()

    def follow() -> None:
        params = {"n": 0, "follow": "true"}
        with httpx.stream("GET", f"{server.url}/api/logs/m", params=params, timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    lines.append(json.loads(line[6:]))
                if done.is_set() or any("release" in x for x in lines):
                    return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    time.sleep(0.5)
    assert chat(server, "hello").status_code == 200
    reader.join(20)
    done.set()
    assert any("release" in x for x in lines), lines  # llama.cpp's "slot release" line


def test_cli_logs_and_events(json_server: Server) -> None:
    server = json_server
    assert chat(server).status_code == 200
    events = cli(server, "events", "--model", "m")
    assert events.returncode == 0, events.stderr
    assert "load requested by" in events.stdout
    assert "ready after" in events.stdout
    as_json = [json.loads(line) for line in cli(server, "events", "--json").stdout.splitlines()]
    assert [e["id"] for e in as_json] == sorted(e["id"] for e in as_json)
    runner_log = cli(server, "logs", "m", "-n", "1")
    assert runner_log.returncode == 0
    assert len(runner_log.stdout.splitlines()) == 1
    gateway_log = cli(server, "logs", "-n", "50").stdout
    assert "modelyard.access" in gateway_log
    missing = cli(server, "logs", "nope")
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr


@pytest.mark.slow
def test_queue_full_names_its_event(server_factory: Callable[..., Server]) -> None:
    server = server_factory(
        f'[models.m]\npath = "{gemma()}"\nchat_template = "gemma"\nctx = 512\n'
        "parallel = 1\nmax_queue = 0\n"
    )
    assert chat(server, "warm up").status_code == 200
    results: list[httpx.Response] = []

    def long() -> None:
        results.append(chat(server, "count to one hundred", max_tokens=200))

    worker = threading.Thread(target=long)
    worker.start()
    deadline = time.monotonic() + 30
    while server.ps()[0]["in_flight"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    refused = chat(server, "too many")
    worker.join(120)
    assert refused.status_code == 429
    message = refused.json()["error"]["message"]
    event_id = int(message.rsplit("(event ", 1)[1].rstrip(")"))
    events = httpx.get(f"{server.url}/api/events").json()["events"]
    (event,) = [e for e in events if e["id"] == event_id]
    assert (event["type"], event["reason"]) == ("refused", "queue_full")


@pytest.mark.slow
def test_live_followers_do_not_hold_up_shutdown(server_factory: Callable[..., Server]) -> None:
    server = server_factory(config())  # shutdown_timeout: 10 s
    ended: list[str] = []

    def follow(path: str) -> None:
        with httpx.stream("GET", f"{server.url}{path}", timeout=30) as response:
            for _ in response.iter_lines():
                pass
        ended.append(path)

    paths = ("/api/events?follow=true", "/api/activity?follow=true", "/api/logs?follow=true")
    readers = [threading.Thread(target=follow, args=(p,), daemon=True) for p in paths]
    for reader in readers:
        reader.start()
    time.sleep(1.0)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(10)
    assert time.monotonic() - started < 3.0  # not the 10 s given to running requests
    for reader in readers:
        reader.join(5)
    assert sorted(ended) == sorted(paths)
