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


def test_imports_no_module_of_workers_or_cli_names_the_gateway() -> None:
    import ast
    from pathlib import Path

    import modelyard

    root = Path(modelyard.__file__).parent
    offenders = []
    for package in ("workers", "cli"):
        for path in sorted((root / package).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                offenders += [
                    f"{path.name}: {n}" for n in names if n.startswith("modelyard.api")
                ]  # lazy imports inside functions count too
    assert offenders == []
