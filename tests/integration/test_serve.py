"""``modelyard serve`` as a user runs it: the demo with no config, bad config, no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.conftest import Server, gemma

pytestmark = pytest.mark.integration


def test_serve_without_config_serves_demo(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    server = server_factory(None, cwd=tmp_path)
    models = httpx.get(f"{server.url}/v1/models").json()["data"]
    assert [(m["id"], m["aliases"], m["capabilities"]) for m in models] == [
        ("gemma-3-270m", ["demo"], ["chat", "completion"]),
        ("all-minilm-l6-v2", ["all-minilm", "all-MiniLM-L6-v2"], ["embedding", "rerank"]),
    ]
    reply = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "demo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        timeout=60,
    )
    assert reply.status_code == 200
    assert reply.json()["usage"]["completion_tokens"] == 4
    assert float(reply.headers["x-modelyard-queue-ms"]) > 0  # it waited for the load
    vectors = httpx.post(
        f"{server.url}/v1/embeddings", json={"model": "all-minilm", "input": "Hi"}, timeout=60
    )
    assert vectors.status_code == 200
    assert len(vectors.json()["data"][0]["embedding"]) == 384


def test_serve_invalid_config_does_not_start(tmp_path: Path) -> None:
    config = tmp_path / "modelyard.toml"
    config.write_text(f'[models.x]\npath = "{gemma()}"\nparallel = "lots"\n')
    result = subprocess.run(
        [sys.executable, "-m", "modelyard", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MODELYARD_HOME": str(tmp_path)},
    )
    assert result.returncode == 2
    assert "modelyard.toml: [models.x] parallel:" in result.stderr


def test_serve_runner_dies_with_killed_gateway(server_factory: Callable[..., Server]) -> None:
    server = server_factory(f'[models.m]\npath = "{gemma()}"\nchat_template = "gemma"\nctx = 512\n')
    assert httpx.post(f"{server.url}/api/load", json={"model": "m"}, timeout=60).status_code == 200
    (entry,) = server.ps()
    runner = psutil.Process(int(str(entry["pid"])))
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    runner.wait(timeout=5)  # raises if the runner outlives its gateway
    assert not runner.is_running()


def test_serve_cli_client_commands(server_factory: Callable[..., Server]) -> None:
    server = server_factory(
        f'[models.m]\npath = "{gemma()}"\nchat_template = "gemma"\nctx = 512\naliases = ["mm"]\n'
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "modelyard", *args, "--url", server.url],
            capture_output=True,
            text=True,
            timeout=120,
        )

    listed = cli("ls")
    assert listed.returncode == 0
    assert "mm" in listed.stdout
    assert cli("load", "mm", "--keep-alive", "-1").stdout.strip() == "m: ready"
    ps = cli("ps", "--json")
    assert '"state": "ready"' in ps.stdout
    assert '"expires_at": null' in ps.stdout  # kept forever
    table = cli("ps").stdout
    assert "m" in table
    assert "never" in table
    assert cli("unload", "m").stdout.strip() == "m: stopped"
    assert server.ps() == []
    missing = cli("load", "nope")
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr


def test_serve_cli_without_server_says_so(tmp_path: Path) -> None:
    from modelyard.runners.process import free_port

    result = subprocess.run(
        [sys.executable, "-m", "modelyard", "ps", "--url", f"http://127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "No modelyard server is running" in result.stderr


def test_serve_pinned_preloads_and_broken_model_reports_log(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    server = server_factory(
        f'[models.pinned]\npath = "{gemma()}"\nchat_template = "gemma"\nctx = 512\n'
        "pinned = true\n"
        f'[models.broken]\npath = "{broken}"\nmemory = "64MiB"\n'
    )
    deadline = time.monotonic() + 60
    while httpx.get(f"{server.url}/ready").status_code != 200:
        assert time.monotonic() < deadline, "pinned model never became ready"
        time.sleep(0.1)
    assert [(m["name"], m["state"], m["pinned"]) for m in server.ps()] == [
        ("pinned", "ready", True)
    ]

    body = {"model": "broken", "prompt": "hi", "max_tokens": 1}
    first = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert first.status_code == 503
    error = first.json()["error"]
    assert error["code"] == "model_load_failed"
    assert "runner exited" in error["message"]
    assert "broken.gguf" in error["message"]  # the tail of the runner's own log
    httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    backing_off = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert backing_off.status_code == 503
    assert "backing off" in backing_off.json()["error"]["message"]
    assert "retry-after" in backing_off.headers
    (failed,) = [m for m in server.ps() if m["name"] == "broken"]
    assert failed["state"] == "failed"
    assert failed["last_error"]
