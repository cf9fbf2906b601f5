"""``modelyard serve`` as a user runs it: the demo with no config, bad config, no orphans."""

from __future__ import annotations

import contextlib
import os
import re
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


def test_serve_a_first_config_file_keeps_the_demo_and_no_demo_drops_it(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    (tmp_path / "mine.gguf").symlink_to(gemma())  # the demo's own file would replace it
    mine = f'[models.mine]\npath = "{tmp_path / "mine.gguf"}"\nchat_template = "gemma"\n'
    server = server_factory(mine, demo=True)
    assert server.model_ids() == ["mine", "gemma-3-270m", "all-minilm-l6-v2"]
    reply = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "demo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        timeout=60,
    )
    assert reply.status_code == 200
    assert reply.json()["model"] == "gemma-3-270m"
    # The file's `demo = false` is tests/unit/test_config.py's; the flag is the server's.
    assert server_factory(mine, "--no-demo", demo=True).model_ids() == ["mine"]


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


@pytest.mark.slow
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
    long_alias = "an-alias-much-too-long-for-any-eighty-column-terminal-" + "x" * 40
    server = server_factory(
        f'[models.m]\npath = "{gemma()}"\nchat_template = "gemma"\nctx = 512\n'
        f'aliases = ["mm", "{long_alias}"]\n'
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
    assert long_alias in listed.stdout  # piped: never cut
    assert cli("load", "mm", "--keep-alive", "-1").stdout.strip() == "m: ready"
    ps = cli("ps", "--json")
    assert '"state": "ready"' in ps.stdout
    assert '"expires_at": null' in ps.stdout  # kept forever
    table = cli("ps").stdout
    assert "m" in table
    assert "never" in table
    assert re.search(r"\b\d+ (second|minute)s? ago\b", table)  # since, relative
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


@pytest.mark.slow
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


LONG_STORY = {
    "model": "m",
    "messages": [{"role": "user", "content": "Write a very long story."}],
    "max_tokens": 3000,
    "stream": True,
    "ignore_eos": True,
}
"""A stream that runs for a minute: still going when the server is asked to stop."""


def _long_story_server(server_factory: Callable[..., Server], shutdown_timeout: int) -> Server:
    return server_factory(
        f"[server]\nshutdown_timeout = {shutdown_timeout}\n"
        f'[models.m]\npath = "{gemma()}"\nchat_template = "gemma"\nctx = 4096\n'
    )


@pytest.mark.parametrize(
    "signum",
    [
        pytest.param(signal.SIGTERM, id="SIGTERM"),
        pytest.param(signal.SIGINT, id="SIGINT", marks=pytest.mark.slow),
    ],
)
def test_serve_stop_ends_streams_with_error_frame_and_stops_runners(
    server_factory: Callable[..., Server], signum: signal.Signals
) -> None:
    server = _long_story_server(server_factory, shutdown_timeout=2)
    frames: list[str] = []
    with (
        httpx.Client(timeout=60) as http,
        http.stream("POST", f"{server.url}/v1/chat/completions", json=LONG_STORY) as response,
    ):
        lines = response.iter_lines()
        frames.append(next(lines))
        (entry,) = server.ps()
        runner = psutil.Process(int(str(entry["pid"])))
        server.process.send_signal(signum)
        sent = time.monotonic()
        frames += [line for line in lines if line.startswith("data: ")]
    ended = time.monotonic() - sent
    server.process.wait(timeout=15)
    exited = time.monotonic() - sent
    assert 1.5 < ended < 6  # the grace period, then the stream is ended for the client
    assert frames[-1] == "data: [DONE]"
    assert '"shutting_down"' in frames[-2]
    runner.wait(timeout=5)
    assert exited < 10
    assert server.process.returncode == 0  # a stop that was asked for
    log = server.log.read_text()
    assert "waiting up to 2s for running requests (1 on m)" in log
    assert "Traceback" not in log


@pytest.mark.slow
def test_serve_second_ctrl_c_exits_at_once(server_factory: Callable[..., Server]) -> None:
    server = _long_story_server(server_factory, shutdown_timeout=30)
    with (
        httpx.Client(timeout=60) as http,
        http.stream("POST", f"{server.url}/v1/chat/completions", json=LONG_STORY) as response,
    ):
        lines = response.iter_lines()
        next(lines)
        (entry,) = server.ps()
        runner = psutil.Process(int(str(entry["pid"])))
        server.process.send_signal(signal.SIGINT)
        time.sleep(1.0)  # now waiting for the stream, up to 30 s
        assert server.process.poll() is None
        sent = time.monotonic()
        server.process.send_signal(signal.SIGINT)
        server.process.wait(timeout=10)
        exited = time.monotonic() - sent
        with contextlib.suppress(httpx.HTTPError):
            for _ in lines:
                pass
    assert exited < 5
    assert server.process.returncode == 0
    runner.wait(timeout=10)  # gone with the gateway
    log = server.log.read_text()
    assert "second Ctrl-C: exiting now" in log
    assert "Traceback" not in log


@pytest.mark.slow
def test_serve_drops_clients_that_never_finish_their_headers(
    server_factory: Callable[..., Server],
) -> None:
    import socket

    server = server_factory("[server]\nheader_timeout = 1\n")
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as slow:
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and then nothing
        t = time.monotonic()
        assert slow.recv(1024) == b""  # closed by the server
        assert 0.8 < time.monotonic() - t < 3
    with socket.create_connection((host, int(port)), timeout=5) as quick:
        quick.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert quick.recv(1024).startswith(b"HTTP/1.1 200")
