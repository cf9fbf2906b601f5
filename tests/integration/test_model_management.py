"""pull, show, rm and live reload against a running server, with the real Gemma GGUF.

The hub is ``tests/hubserver.py`` on loopback (``HF_ENDPOINT``), serving Gemma's real file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.hubserver import FakeHub, Repo
from tests.integration.conftest import HUB_FILE, HUB_REPO, Server, gemma

pytestmark = pytest.mark.integration

REPO = HUB_REPO
GEMMA_FILE = HUB_FILE


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "modelyard", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )


def complete(server: Server, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": 4, **extra}
    return httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)


def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# ---- pull and rm through the server ------------------------------------------------------------


@pytest.mark.slow
def test_pull_through_the_server_serves_the_model_at_once_and_rm_deletes_it(
    server_factory: Callable[..., Server], hub: FakeHub
) -> None:
    # No watcher: the pulled model must be served because the pull itself reloads.
    server = server_factory('[server]\nreload_interval = "0"\n', env={"HF_ENDPOINT": hub.url})
    result = cli("pull", REPO, "--url", server.url)
    assert result.returncode == 0, result.stderr
    assert f"pulled {REPO}:Q4_K_M" in result.stdout
    path = server.models_dir / REPO / GEMMA_FILE
    assert path.read_bytes() == gemma().read_bytes()

    reply = complete(server, f"{REPO}:Q4_K_M")
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 4
    assert complete(server, REPO).status_code == 200  # the bare repo names it too

    again = cli("pull", f"{REPO}:q4_k_m", "--url", server.url)
    assert again.returncode == 0, again.stderr
    assert "is up to date" in again.stdout
    assert len(hub.state.downloads(GEMMA_FILE)) == 1

    refused = cli("rm", REPO, "--url", server.url)
    assert refused.returncode == 1
    assert "is ready; unload it first" in refused.stderr
    assert path.is_file()

    removed = cli("rm", REPO, "--force", "--url", server.url)
    assert removed.returncode == 0, removed.stderr
    assert not (server.models_dir / "google").exists()
    assert REPO not in json.dumps(httpx.get(f"{server.url}/v1/models").json())
    assert server.ps() == []
    assert complete(server, REPO).status_code == 404


SSE = {"Accept": "text/event-stream"}
"""What modelyard's CLI and web page ask of /api/pull (Ollama's clients get NDJSON)."""


@pytest.mark.slow
def test_pull_api_streams_progress_and_errors_as_events(
    server_factory: Callable[..., Server], hub: FakeHub
) -> None:
    server = server_factory('[server]\nreload_interval = "0"\n', env={"HF_ENDPOINT": hub.url})

    def events(model: str) -> list[dict[str, Any]]:
        frames = []
        with httpx.stream(
            "POST", f"{server.url}/api/pull", json={"model": model}, timeout=120, headers=SSE
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    frames.append(json.loads(line[6:]))
        return frames

    frames = events(f"{REPO}:Q4_K_M")
    assert frames[0] == {"status": "resolving", "file": None, "completed": 0, "total": 0}
    downloading = [f for f in frames if f["status"] == "downloading"]
    assert downloading[-1]["completed"] == downloading[-1]["total"] == gemma().stat().st_size
    assert frames[-1]["status"] == "success"
    assert frames[-1]["model"] == f"{REPO}:Q4_K_M"
    assert frames[-1]["name"] == "gemma-3-270m-it-q4_k_m"

    once = httpx.post(
        f"{server.url}/api/pull", json={"model": f"{REPO}:Q4_K_M", "stream": False}, timeout=60
    )
    assert once.status_code == 200
    assert (once.json()["status"], once.json()["up_to_date"]) == ("success", True)

    [error] = events(f"{REPO}:Q8_0")[-1:]
    assert error["error"]["code"] == "not_found_on_hub"
    assert "it has: Q4_K_M" in error["error"]["message"]

    bad = httpx.post(f"{server.url}/api/pull", json={"model": "not a repo"})
    assert bad.status_code == 400
    assert "is not a model reference" in bad.json()["error"]  # Ollama's shape on its route

    # A client that leaves stops the download; the next pull resumes the partial file.
    slow = "slow-Q4_K_M.gguf"
    hub.state.repos["acme/slow-GGUF"] = Repo({slow: os.urandom(24 * 1024 * 1024)})
    hub.state.slow.add(slow)
    with httpx.stream(
        "POST", f"{server.url}/api/pull", json={"model": "acme/slow-GGUF"}, timeout=60, headers=SSE
    ) as r:
        for line in r.iter_lines():
            if '"completed": 0' not in line and '"downloading"' in line:
                break  # some bytes arrived: hang up
    partial = server.models_dir / "acme" / "slow-GGUF" / ".partial"
    wait_for(lambda: any(partial.glob(f"{slow}.*.part")))
    [part] = partial.glob(f"{slow}.*.part")
    sizes = [-1]

    def settled() -> bool:
        sizes.append(part.stat().st_size)
        time.sleep(0.5)
        return sizes[-1] == sizes[-2]

    wait_for(settled)  # the server noticed the hang-up and stopped
    size = part.stat().st_size
    assert 0 < size < 24 * 1024 * 1024  # stopped part-way, the partial file kept
    hub.state.slow.clear()
    resumed = httpx.post(
        f"{server.url}/api/pull", json={"model": "acme/slow-GGUF", "stream": False}, timeout=60
    )
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["downloaded"] == 24 * 1024 * 1024 - size
    assert hub.state.downloads(slow)[-1].range == f"bytes={size}-"

    # A model the user put there by hand is not modelyard's to delete.
    os.symlink(gemma(), server.models_dir / "mine.gguf")
    httpx.post(f"{server.url}/api/reload").raise_for_status()
    refused = httpx.request("DELETE", f"{server.url}/api/delete", json={"model": "mine"})
    assert refused.status_code == 400
    assert "was not pulled by modelyard" in refused.json()["error"]
    # Loaded, and asked with force: still refused, and not unloaded for nothing.
    httpx.post(f"{server.url}/api/load", json={"model": "mine"}, timeout=120).raise_for_status()
    forced = httpx.request(
        "DELETE", f"{server.url}/api/delete", json={"model": "mine", "force": True}, timeout=60
    )
    assert forced.status_code == 400
    assert [m["state"] for m in server.ps() if m["name"] == "mine"] == ["ready"]


def test_pull_and_rm_without_a_server_work_on_the_files(hub: FakeHub, tmp_path: Path) -> None:
    hub.state.repos["acme/small-GGUF"] = Repo({"small-Q8_0.gguf": b"GGUF" + os.urandom(5000)})
    env = {
        "HF_ENDPOINT": hub.url,
        "MODELYARD_HOME": str(tmp_path),
        "MODELYARD_URL": "http://127.0.0.1:9",
    }
    pulled = cli("pull", "acme/small-GGUF", env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert "pulled acme/small-GGUF:Q8_0" in pulled.stdout
    assert "small-Q8_0.gguf" in pulled.stderr  # the progress bar
    path = tmp_path / "models" / "acme" / "small-GGUF" / "small-Q8_0.gguf"
    assert path.is_file()
    listed = cli("show", "acme/small-GGUF:Q8_0", "--json", env=env)
    shown = json.loads(listed.stdout)
    assert shown["pulled"]["reference"] == "acme/small-GGUF:Q8_0"
    # The "model" is random bytes after GGUF's magic: show says so instead of failing.
    assert "damaged GGUF header" in shown["error"]
    assert shown["memory"]["estimate"] is None
    assert "damaged GGUF header" in shown["memory"]["error"]
    removed = cli("rm", "acme/small-GGUF", env=env)
    assert removed.returncode == 0, removed.stderr
    assert not (tmp_path / "models" / "acme").exists()
    missing = cli("pull", "acme/absent", env=env)
    assert missing.returncode == 1
    assert "acme/absent was not found" in missing.stderr


# ---- show ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_show_gemma_reports_metadata_and_an_estimate_near_the_measured_footprint(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    config = f'[models.g]\npath = "{gemma()}"\nctx = 2048\nparallel = 2\nchat_template = "gemma"\n'
    server = server_factory(config)
    shown = httpx.post(f"{server.url}/api/show", json={"model": "g"}).json()
    assert shown["architecture"] == "gemma3"
    assert shown["parameter_count"] == 268_098_176
    assert "num_ctx                        2048" in shown["parameters"]  # Ollama's text
    assert shown["quantization"] == "Q4_K_M"
    assert (shown["layers"], shown["heads"], shown["kv_heads"]) == (18, 4, 1)
    assert shown["context_length"] == 32768
    assert shown["chat_template"] == "gemma"
    assert shown["warnings"] == []
    assert shown["size"] == gemma().stat().st_size
    assert shown["settings"] == {"ctx": 2048, "parallel": 2, "gpu_layers": 0}
    estimate = shown["memory"]["estimate"]["ram"]

    cache = shown["memory"]["prompt_cache"]
    assert cache == gemma().stat().st_size // 4 // 2**20 * 2**20  # the default share

    assert complete(server, "g").status_code == 200
    measured = httpx.post(f"{server.url}/api/show", json={"model": "g"}).json()["memory"]
    used = measured["measured"]["ram"]
    # One short request fills no prompt cache yet: compare the rest of the estimate.
    error = (estimate - cache - used) / used
    print(f"gemma estimate {estimate} (cache {cache}) measured {used}: {error:+.1%}")
    assert abs(error) < 0.25
    assert used < estimate

    # Without a server, the CLI reads the same files and gives the same answer.
    (tmp_path / "modelyard.toml").write_text(config)
    local = cli(
        "show",
        "g",
        "--json",
        "--url",
        "http://127.0.0.1:9",
        env={"MODELYARD_CONFIG": str(tmp_path / "modelyard.toml"), "MODELYARD_HOME": str(tmp_path)},
    )
    assert local.returncode == 0, local.stderr
    data = json.loads(local.stdout)
    assert (data["architecture"], data["memory"]["estimate"]["ram"]) == ("gemma3", estimate)
    human = cli(
        "show",
        "g",
        "--url",
        "http://127.0.0.1:9",
        env={"MODELYARD_CONFIG": str(tmp_path / "modelyard.toml"), "MODELYARD_HOME": str(tmp_path)},
    )
    assert "268M" in human.stdout
    assert "Q4_K_M" in human.stdout


def test_a_gguf_without_a_chat_template_is_named_in_ls_show_and_the_log(
    server_factory: Callable[..., Server],
) -> None:
    # The demo Gemma's GGUF carries no chat template (the demo entry sets "gemma").
    server = server_factory(f'[models.bare]\npath = "{gemma()}"\nctx = 512\n')
    fix = f'[models.bare] path = "{gemma()}", chat_template = "gemma"'
    listed = cli("ls", "--url", server.url)
    assert listed.returncode == 0
    assert "bare" in listed.stdout
    assert "warning: bare:" in listed.stderr
    assert fix in " ".join(listed.stderr.split())
    shown = cli("show", "bare", "--url", server.url)
    assert "has no chat template" in shown.stdout
    chat = {"model": "bare", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=chat, timeout=120)
    assert reply.status_code == 200  # it still answers (in ChatML), but nobody is surprised
    assert f"bare: {gemma().name} has no chat template" in server.log.read_text()


# ---- live reload -----------------------------------------------------------------------------


@pytest.mark.slow
def test_live_reload_adds_removes_after_in_flight_and_survives_a_broken_edit(
    server_factory: Callable[..., Server],
) -> None:
    head = f'[server]\nreload_interval = "0.2s"\n[models.a]\npath = "{gemma()}"\nparallel = 2\n'
    server = server_factory(head)
    config = server.home.parent / "modelyard.toml"
    assert server.model_ids() == ["a"]

    config.write_text(head + f'[models.b]\npath = "{gemma()}"\nparallel = 2\n')
    wait_for(lambda: "b" in server.model_ids())
    assert complete(server, "b").status_code == 200

    # Remove b while a long generation runs on it.
    started = threading.Event()
    answer: dict[str, Any] = {}

    def generate() -> None:
        body = {
            "model": "b",
            "prompt": "Once upon a time",
            "max_tokens": 160,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=120) as r:
            answer["status"] = r.status_code
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    started.set()
                    chunk = json.loads(line[6:])
                    for choice in chunk["choices"]:
                        if choice.get("finish_reason"):
                            answer["finish"] = choice["finish_reason"]
                    if chunk.get("usage"):
                        answer["tokens"] = chunk["usage"]["completion_tokens"]
                elif line == "data: [DONE]":
                    answer["done"] = True

    thread = threading.Thread(target=generate)
    thread.start()
    assert started.wait(60)
    config.write_text(head)
    wait_for(lambda: "b" not in server.model_ids())
    assert thread.is_alive(), "the generation should still be running"
    [b] = [m for m in server.ps() if m["name"] == "b"]
    assert (b["removed"], b["in_flight"]) == (True, 1)
    assert complete(server, "b").status_code == 404  # no new requests
    thread.join(120)
    assert answer == {"status": 200, "done": True, "finish": "length", "tokens": 160}
    wait_for(lambda: all(m["name"] != "b" for m in server.ps()))

    # A broken edit keeps the last good catalog, and says why.
    config.write_text(head + "[models.c\n")
    wait_for(lambda: httpx.get(f"{server.url}/api/models").json()["reload_error"] is not None)
    assert "invalid TOML" in httpx.get(f"{server.url}/api/models").json()["reload_error"]
    assert server.model_ids() == ["a"]
    assert complete(server, "a").status_code == 200
    reload = httpx.post(f"{server.url}/api/reload")
    assert reload.status_code == 400
    assert "the last good catalog stays" in reload.json()["error"]["message"]

    # Fixed, and a file dropped into the models directory: both appear.
    config.write_text(head)
    server.models_dir.mkdir(exist_ok=True)
    os.symlink(gemma(), server.models_dir / "dropped.gguf")
    wait_for(lambda: server.model_ids() == ["a", "dropped"])
    assert httpx.get(f"{server.url}/api/models").json()["reload_error"] is None
    assert complete(server, "dropped").status_code == 200

    # Changed settings: the loaded runner keeps its own; the next load takes the new ones.
    def slot_ctx() -> tuple[object, int]:
        [a] = [m for m in server.ps() if m["name"] == "a"]
        runner = server.runner("a")
        slots = httpx.get(f"{runner.url}/slots", headers=runner.headers).json()
        return a["pid"], slots[0]["n_ctx"]

    pid, ctx = slot_ctx()
    config.write_text(head.replace("parallel = 2\n", "parallel = 2\nctx = 1024\n"))
    wait_for(lambda: _catalog_ctx(server, "a") == 1024)
    assert slot_ctx() == (pid, ctx)  # not restarted
    httpx.post(f"{server.url}/api/unload", json={"model": "a"}, timeout=60).raise_for_status()
    assert complete(server, "a").status_code == 200
    new_pid, new_ctx = slot_ctx()
    assert new_pid != pid
    assert (ctx, new_ctx) == (4096, 1024)

    # Only a change outside [models] is reported as one (it takes effect at restart).
    outside = "settings outside [models] changed"
    assert outside not in server.log.read_text()
    config.write_text(head.replace("[server]\n", "[server]\nlog_files = 5\n"))
    wait_for(lambda: outside in server.log.read_text())


def _catalog_ctx(server: Server, name: str) -> int:
    models = httpx.get(f"{server.url}/api/models").json()["models"]
    return int(next(m["ctx"] for m in models if m["name"] == name))


def test_a_reloaded_models_directory_is_the_one_pull_and_the_system_page_use(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    os.symlink(gemma(), second / "moved.gguf")
    config = '[server]\nmodels_dir = "{}"\nreload_interval = 0\n'
    server = server_factory(config.format(first), env={"MODELYARD_MODELS_DIR": None})
    assert httpx.get(f"{server.url}/api/system").json()["disk"]["path"] == str(first)
    (server.home.parent / "modelyard.toml").write_text(config.format(second))
    httpx.post(f"{server.url}/api/reload").raise_for_status()
    assert "moved" in server.model_ids()
    assert httpx.get(f"{server.url}/api/system").json()["disk"]["path"] == str(second)
