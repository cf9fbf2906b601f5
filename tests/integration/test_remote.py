"""engine = "remote": a second modelyard (on the canned responder) as the upstream of a
first one; and the responder itself as a remote that wants a key."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from modelyard.runners.process import free_port
from tests.fake import RESPONDER, responder_binary
from tests.integration.conftest import Server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "sk-remote-7f3a9c"


def chat(server: Server, model: str, **body: object) -> httpx.Response:
    message = {"role": "user", "content": "hi"}
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": model, "messages": [message], **body},
        timeout=30,
    )


@pytest.fixture(scope="module")
def far(server_factory: Callable[..., Server], tmp_path_factory: pytest.TempPathFactory) -> Server:
    """The remote: a modelyard serving the canned responder as model "canned"."""
    tmp = tmp_path_factory.mktemp("far")
    (tmp / "canned.gguf").write_bytes(b"GGUF")
    return server_factory(
        f'[models.canned]\npath = "{tmp / "canned.gguf"}"\n'
        f'llama_server = "{responder_binary(tmp)}"\n'
        'memory = "16MiB"\nparallel = 1\nmax_queue = 0\nkeep_alive = -1\n'
    )


@pytest.fixture(scope="module")
def near(server_factory: Callable[..., Server], far: Server) -> Server:
    return server_factory(
        f'[models.faraway]\nurl = "{far.url}/v1"\nupstream_model = "canned"\n'
        "max_concurrency = 4\nmax_queue = 8\n"
    )


def test_remote_model_is_routed_and_shown_as_remote(near: Server) -> None:
    answer = chat(near, "faraway")
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"].startswith("Hello")
    streamed = chat(near, "faraway", stream=True, x_chunks=3)
    assert streamed.text.endswith("data: [DONE]\n\n")
    (entry,) = near.ps()
    assert (entry["name"], entry["engine"], entry["state"]) == ("faraway", "remote", "ready")
    assert entry["memory"]["estimate"] == {}  # outside the budget
    assert entry["parallel"] == 4
    listed = subprocess.run(
        [sys.executable, "-m", "modelyard", "ps", "--url", near.url],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "ready (remote)" in listed


def test_remote_errors_pass_through_with_their_envelope(near: Server, far: Server) -> None:
    # The remote's only slot is busy and it queues nothing: its 429 reaches the client as is.
    busy = threading.Thread(
        target=chat, args=(far, "canned"), kwargs={"stream": True, "x_chunks": 40, "x_delay_ms": 25}
    )
    busy.start()
    deadline = time.monotonic() + 10
    while not [m for m in far.ps() if m["in_flight"]]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    refused = chat(near, "faraway")
    busy.join(30)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "queue_full"
    assert refused.headers["retry-after"] == "1"
    # The remote's own server error (its engine failed): its 502 and envelope, not ours.
    failed = chat(near, "faraway", x_status=500)
    assert failed.status_code == 502
    assert failed.json()["error"]["code"] == "runner_failed"


@pytest.fixture
def keyed_responder() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(RESPONDER), "--port", str(port), "--api-key", SECRET],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(url + "/health", timeout=1)
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    yield url, process
    process.terminate()
    process.wait(10)


def test_remote_key_comes_from_the_environment_and_never_shows(
    server_factory: Callable[..., Server], keyed_responder: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, responder = keyed_responder
    entry = f'url = "{url}"\napi_key = "env:FAR_KEY"\nhealth = "/health"\n'
    config = f"[models.keyed]\n{entry}\n[models.nokey]\n{entry.replace('FAR_KEY', 'NO_KEY')}"
    server = server_factory(config, env={"FAR_KEY": SECRET})
    echoed = chat(server, "keyed", x_echo=True)
    assert echoed.status_code == 200
    assert echoed.json()["authorization"] is True
    missing = chat(server, "nokey")
    assert missing.status_code == 503
    assert "environment variable NO_KEY is empty" in missing.json()["error"]["message"]
    # The remote goes away: 502 naming where it was, never the key.
    responder.kill()
    responder.wait(10)
    gone = chat(server, "keyed")
    assert gone.status_code == 502
    message = gone.json()["error"]["message"]
    assert url in message
    assert SECRET not in message
    assert SECRET not in server.log.read_text()
    assert SECRET not in (server.home / "logs" / "gateway.log").read_text()
