"""README's five-minute tour, every command and snippet as written, against a real server on
the demo models (the pull from a loopback hub): each must succeed within a bound, so that no
example leaves a newcomer waiting on a model that never stops."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.hubserver import FakeHub, Repo
from tests.integration.conftest import Server, gemma

pytestmark = pytest.mark.slow  # a pull and three model loads: left to CI

ROOT = Path(__file__).resolve().parents[2]
BOUND = 120.0
"""Seconds any one step may take on a 2-core machine (the first load included)."""


def tour() -> list[tuple[str, str]]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(sh|python)\n(.*?)```", section, re.S)


def test_readme_tour_has_the_steps_it_promises() -> None:
    text = "\n".join(code for _, code in tour())
    for step in ("/v1/completions", "modelyard ls", "modelyard ps", "from openai import OpenAI",
                 "/api/generate", "modelyard pull", "modelyard run"):  # fmt: skip
        assert step in text


def test_readme_tour_runs_as_written_and_each_step_ends(
    server_factory: Callable[..., Server], hub: FakeHub, tmp_path: Path
) -> None:
    # The hub's Qwen is the demo's own file under Qwen's name: the pull and the chat are real.
    hub.state.repos["Qwen/Qwen2.5-0.5B-Instruct-GGUF"] = Repo(
        {"qwen2.5-0.5b-instruct-q4_k_m.gguf": gemma().read_bytes()}
    )
    server = server_factory(None, env={"HF_ENDPOINT": hub.url})
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env |= {"MODELYARD_URL": server.url, "HF_ENDPOINT": hub.url, "PATH": f"{bin_dir}:{env['PATH']}"}
    took = []
    for language, code in tour():
        code = code.replace("localhost:8000", server.url.removeprefix("http://"))
        code = code.replace("http://127.0.0.1:8000", server.url)
        if language == "sh":
            argv = ["bash", "-euo", "pipefail", "-c", code.replace(".venv/bin/", f"{bin_dir}/")]
        else:
            argv = [sys.executable, "-c", code]
        started = time.monotonic()
        try:
            done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=BOUND)  # fmt: skip
        except subprocess.TimeoutExpired:
            pytest.fail(f"did not end within {BOUND:.0f} s:\n{code}")
        took.append((round(time.monotonic() - started, 1), code.splitlines()[0][:60]))
        assert done.returncode == 0, f"{code}\n{done.stdout}\n{done.stderr}"
    print(took)
