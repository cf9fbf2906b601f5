"""The container files, checked without a Docker engine: compose.yaml against the Compose
Specification's schema, and what each Dockerfile must do (the install steps themselves run in
tests/integration/test_install.py)."""

from __future__ import annotations

import json
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def test_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads(
        (files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text()
    )
    jsonschema.validate(compose(), schema)  # raises with the path of what is wrong
    broken = {**compose(), "services": {"x": {"ports": "8000"}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_compose_has_cpu_and_gpu_profiles_and_an_optional_postgres() -> None:
    services = compose()["services"]
    cpu, gpu, db = services["modelyard"], services["modelyard-gpu"], services["postgres"]
    assert (cpu["profiles"], gpu["profiles"], db["profiles"]) == (["cpu"], ["gpu"], ["postgres"])
    assert cpu["build"]["dockerfile"] == "Dockerfile"
    assert gpu["build"]["dockerfile"] == "Dockerfile.cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    for service in (cpu, gpu):
        assert "8000:8000" in service["ports"]
        assert any(v.endswith(":/models") for v in service["volumes"])
    assert db["image"].startswith("postgres:15")
    for service in services.values():
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file()


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_is_multi_stage_non_root_with_healthcheck_and_volume(name: str) -> None:
    text = (ROOT / name).read_text()
    lines = [line for line in text.replace("\\\n", " ").splitlines() if line.strip()]
    instructions = [line.split()[0] for line in lines if not line.startswith("#")]
    assert instructions.count("FROM") == 2  # build stage, then a runtime without pip's debris
    assert re.search(r"^COPY --from=build /opt/modelyard /opt/modelyard$", text, re.M)
    assert "docker/install.sh /opt/modelyard" in text  # the tested install steps
    (user,) = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user not in ("root", "0")
    assert instructions.index("USER") > instructions.index("COPY", instructions.index("FROM", 1))
    assert "HEALTHCHECK" in instructions
    assert "/health" in text
    assert re.search(r'^VOLUME \["/models", "/data"\]$', text, re.M)
    assert re.search(r"^EXPOSE 8000$", text, re.M)
    assert re.search(r'^CMD \["modelyard", "serve"\]$', text, re.M)
    for line in lines:
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"{name}: COPY {source}: not in the project"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored  # the build context stays small


def test_compose_starts_modelyard_after_a_healthy_postgres_when_there_is_one() -> None:
    services = compose()["services"]
    for name in ("modelyard", "modelyard-gpu"):
        needs = services[name]["depends_on"]["postgres"]
        # Only under --profile postgres: without it, modelyard starts alone (SQLite).
        assert needs == {"condition": "service_healthy", "required": False}


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_health_check_follows_the_port(name: str, tmp_path: Path) -> None:
    """The health check asks the port the server listens on (``MODELYARD_PORT``), not 8000."""
    import http.server
    import os
    import socket
    import subprocess
    import sys
    import threading

    text = (ROOT / name).read_text().replace("\\\n", " ")
    (check,) = re.findall(r"^HEALTHCHECK .*? CMD (\[.*\])$", text, re.M)
    argv = json.loads(check)
    argv[0] = sys.executable

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    try:
        for port, healthy in ((server.server_port, True), (closed, False)):
            env = {**os.environ, "MODELYARD_PORT": str(port)}
            done = subprocess.run(argv, env=env, capture_output=True, timeout=30, check=False)
            assert (done.returncode == 0) == healthy, done.stderr
    finally:
        server.shutdown()
        server.server_close()


def test_install_script_pins_the_torch_the_readme_installs() -> None:
    readme = set(re.findall(r"torch==[0-9.]+", (ROOT / "README.md").read_text()))
    (pinned,) = re.findall(
        r"TORCH_SPEC:-(torch==[0-9.]+)", (ROOT / "docker/install.sh").read_text()
    )
    assert readme == {pinned}
