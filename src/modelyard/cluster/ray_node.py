"""A Ray node of this machine, as a child process: ``ray start --block``, its ports pinned,
started with retries, stopped by its own process group (never ``ray stop``, which stops every
Ray process on the host).

It dies with the process that started it, even by SIGKILL (``workers.lifeline``): a
gateway or ``join`` that is killed leaves no Ray node behind.

``ray start`` fails about one time in five on a loaded machine (its raylet gives the
dashboard agent a fixed 15 s to come up, Ray issue #65983): a start is tried up to three
times. With ``--block`` the node's processes share the fate of the ``ray start`` process,
so stopping it (and its group) leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modelyard.errors import ModelyardError
from modelyard.runners.process import free_port
from modelyard.workers.lifeline import PARENT_ENV

log = logging.getLogger(__name__)

HEALTH_CHECKS = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
"""A head's health checks of its nodes: a cut-off node is declared dead in ~5 s (Ray's
defaults take ~65 s)."""

_QUIET = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_IMPORT_WARNING": "1"}
_READY = "Ray runtime started"
_TRIES = 3
DEFAULT_PORT = 6380
"""The head's GCS port (Ray's own default, 6379, is Redis's: it is often taken)."""


class ClusterError(ModelyardError):
    """Ray could not be started or reached."""

    status = 503


def _ports(host: str) -> list[str]:
    """Every port a node opens, pinned to ports free now, so that nodes on one host (and
    this node's retries) never collide."""
    flags = [
        "--node-manager-port",
        "--object-manager-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
        "--metrics-export-port",
    ]
    pinned = [f"{flag}={free_port(host)}" for flag in flags]
    low = free_port(host)
    return [*pinned, f"--min-worker-port={low}", f"--max-worker-port={low + 200}"]


def ray_binary() -> str:
    """The ``ray`` command of this Python's environment."""
    here = Path(sys.executable).with_name("ray")
    found = str(here) if here.exists() else shutil.which("ray")
    if found is None:
        raise ClusterError("Ray is not installed: pip install 'modelyard[cluster]'")
    return found


@dataclass
class RayNode:
    """A started Ray node (``address``: the head's GCS address it belongs to)."""

    process: subprocess.Popen[bytes]
    address: str
    ip: str
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """Stops the node and every process it started."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


def token_env(token: str | None) -> dict[str, str]:
    """The environment a Ray process needs to take part in a cluster with ``token``
    (Ray's token authentication; ``None``: none)."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token} if token else {}


def start_head(
    ip: str,
    port: int = DEFAULT_PORT,
    *,
    temp_dir: Path,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
) -> RayNode:
    """A head node at ``ip:port``: its GCS, no dashboard, health checks every second
    (``env``: with ``token_env``, only holders of the token may join or connect)."""
    args = [
        "--head",
        f"--port={port}",
        "--include-dashboard=false",
        f"--temp-dir={temp_dir}",
    ]
    return _start(args, f"{ip}:{port}", ip, temp_dir, timeout, {**HEALTH_CHECKS, **(env or {})})


def start_worker(
    address: str,
    ip: str,
    *,
    temp_dir: Path,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
) -> RayNode:
    """A node of the cluster whose head is at ``address``."""
    args = [f"--address={address}", f"--temp-dir={temp_dir}"]
    return _start(args, address, ip, temp_dir, timeout, dict(env or {}))


def _start(
    args: Sequence[str],
    address: str,
    ip: str,
    temp_dir: Path,
    timeout: float,
    env: Mapping[str, str],
) -> RayNode:
    temp_dir.mkdir(parents=True, exist_ok=True)
    environ = {**os.environ, **_QUIET, **env, PARENT_ENV: str(os.getpid())}
    failures = []
    for attempt in range(1, _TRIES + 1):
        log_path = temp_dir / f"ray-start-{os.getpid()}-{attempt}.log"
        argv = [
            # It dies with us, even by SIGKILL, and its node's processes with it.
            sys.executable,
            "-m",
            "modelyard.workers.lifeline",
            "--",
            ray_binary(),
            "start",
            "--block",
            f"--node-ip-address={ip}",
            "--num-cpus=1",
            "--object-store-memory=100000000",
            "--include-log-monitor=false",
            "--disable-usage-stats",
            *_ports(ip),
            *args,
        ]
        with open(log_path, "wb") as output:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=environ,
                start_new_session=True,
            )
        node = RayNode(process, address, ip, log_path, env)
        if _wait_started(node, timeout):
            return node
        node.stop(grace=2.0)
        said = log_path.read_text(errors="replace")
        if "InvalidAuthToken" in said or "AuthenticationError" in said:
            raise ClusterError(
                f"the head at {address} refuses this node: its token is missing or wrong "
                "(modelyard join --token, as serve --cluster printed it)"
            )
        tail = said[-800:]
        failures.append(tail)
        log.warning("ray start on %s failed (try %d of %d):\n%s", ip, attempt, _TRIES, tail)
    raise ClusterError(f"ray start on {ip} failed {_TRIES} times:\n{failures[-1]}")


def _wait_started(node: RayNode, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _READY in node.log_path.read_text(errors="replace"):
            return True
        if not node.alive:
            return False
        time.sleep(0.2)
    return False
