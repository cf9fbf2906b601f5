"""Packages point one way: runner workers and the CLI stand alone, apart from the gateway."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "modelyard.workers.encoder",
        "modelyard.workers.llamacpp",
        "modelyard.workers.lifeline",
        "modelyard.cli.main",
    ],
)
def test_imports_workers_and_cli_do_not_load_the_gateway(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('modelyard.api'))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == ""
