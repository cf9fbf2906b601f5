"""docker/install.sh, the container images' install steps, run for real in a fresh virtual
environment (there is no Docker engine here): what it installs imports, and serves."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from modelyard.runners.process import free_port
from tests.integration.conftest import gemma, minilm

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.mark.timeout(900)
def test_install_script_installs_a_modelyard_that_serves(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MODELYARD_", "PIP_"))}
    # Here torch's CPU build is a local file pip finds on its own; images use PyTorch's index.
    environ.update(TORCH_SPEC="torch==2.13.0", TORCH_INDEX="")
    installed = subprocess.run(
        ["sh", str(ROOT / "docker" / "install.sh"), str(venv), str(ROOT)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert installed.stdout.startswith("modelyard ")  # its own check ran
    # Installed, not linked to this checkout.
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import modelyard; print(modelyard.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(venv))

    config = tmp_path / "modelyard.toml"
    config.write_text(
        f'[models.chat]\npath = "{gemma()}"\nchat_template = "gemma"\nctx = 512\n'
        f'[models.emb]\npath = "{minilm()}"\n'
    )
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [str(venv / "bin" / "modelyard"), "serve", "--port", str(port), "--config", str(config)],
        env={**environ, "MODELYARD_HOME": str(tmp_path / "home"), "MODELYARD_DEMO": "false"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while not _healthy(url):
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "the installed server did not come up"
            time.sleep(0.1)
        body = {"model": "chat", "prompt": "Once upon a time", "max_tokens": 3}
        answer = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] == 3
        vectors = httpx.post(
            f"{url}/v1/embeddings", json={"model": "emb", "input": "hi"}, timeout=120
        )
        assert vectors.status_code == 200, vectors.text
        assert len(vectors.json()["data"][0]["embedding"]) == 384
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
