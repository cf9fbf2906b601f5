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


ROOMS = [
    "quantity",
    "clock",
    "feed",
    "errors",
    "protocol",
    "catalog",
    "config",
    "logbook",
    "workers",
    "runners",
    "scheduler",
    "accounts",
    "dialect",
    "engines",
    "hub",
    "reload",
    "cluster",
    "api",
    "gate",
    "server",
    "cli",
    "__main__",
]
"""The package's rooms, lowest first: each may import only from rooms before it."""

SCHEDULER_ROOMS = [
    "state",
    "queue",
    "policy",
    "event",
    "placement",
    "journal",
    "budget",
    "replica",
    "model",
    "account",
    "meter",
    "fleet",
    "roster",
    "scheduler",
    "__init__",
]
"""``scheduler/``'s modules, lowest first: placement and the replica know nothing of the
owner; the owner (``scheduler``) sits on top."""


def _arrows(package: str, depth: int) -> set[tuple[str, str]]:
    """(importer, imported) for every import between modules of ``package``, each named by
    its part at ``depth`` below ``modelyard`` (1: the room; 2: a module of a room); lazy
    imports inside functions and imports for type checking only count too."""
    import ast
    from pathlib import Path

    import modelyard

    root = Path(modelyard.__file__).parent
    base = root / package if package else root
    arrows = set()
    for path in base.rglob("*.py"):
        parts = ("modelyard", *path.relative_to(root).with_suffix("").parts)
        if len(parts) <= depth:
            continue
        here = parts[depth]
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                # ``from modelyard.scheduler import account`` imports the module ``account``.
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                target = name.split(".")
                module = root.joinpath(*target[1:])
                if not (module.with_suffix(".py").exists() or module.is_dir()):
                    target = target[:-1]  # a name from a module, not a module
                if target[0] != "modelyard" or len(target) <= depth:
                    continue
                if package and target[1] != package:
                    continue
                if target[depth] != here:
                    arrows.add((here, target[depth]))
    return arrows


@pytest.mark.parametrize(
    ("package", "depth", "rooms"), [("", 1, ROOMS), ("scheduler", 2, SCHEDULER_ROOMS)]
)
def test_imports_point_down_the_rooms_only(package: str, depth: int, rooms: list[str]) -> None:
    arrows = _arrows(package, depth)
    known = {room for arrow in arrows for room in arrow}
    assert known <= set(rooms), f"rooms not placed: {known - set(rooms)}"
    back = sorted((a, b) for a, b in arrows if rooms.index(b) > rooms.index(a))
    assert back == []  # no back arrow, hence no circle
