"""The CLI's own checks, before any server starts: version, -h, flags named in their errors,
a busy port, URLs without a scheme."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelyard import __version__


def modelyard(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    return subprocess.run(
        [sys.executable, "-m", "modelyard", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environ, **(env or {})},
    )


def test_cli_version_and_short_help() -> None:
    assert modelyard("--version").stdout.strip() == f"modelyard {__version__}"
    for args in (("-h",), ("serve", "-h"), ("logs", "-h"), ("run", "-h"), ("ls", "--help")):
        shown = modelyard(*args)
        assert shown.returncode == 0
        assert "Usage:" in shown.stdout
        assert "<bool>" not in shown.stdout  # plain flag names, no Python types
        assert "<str>" not in shown.stdout
    run = " ".join(modelyard("run", "-h").stdout.split())
    assert "A model's name or alias" in run  # arguments keep their help
    assert "[default: 100]" in " ".join(modelyard("logs", "-h").stdout.split())


def test_cli_serve_names_the_flag_in_its_errors(tmp_path: Path) -> None:
    lots = modelyard("serve", "--memory", "lots")
    assert lots.returncode == 2
    assert lots.stderr.startswith("--memory: invalid size 'lots'")
    missing = modelyard("serve", "--models-dir", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert "--models-dir: no such directory" in missing.stderr


def test_cli_serve_on_a_busy_port_says_so_before_any_banner(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = modelyard(
            "serve", "--port", str(port), env={"MODELYARD_HOME": str(tmp_path / "home")}
        )
    assert result.returncode == 1
    assert time.monotonic() - started < 30
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0]
    assert "--port" in lines[0]
    assert "endpoint" not in result.stderr  # no banner


def test_cli_url_without_a_scheme_is_http() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = modelyard("ps", env={"MODELYARD_URL": f"localhost:{port}"})
    assert result.returncode == 1
    assert f"No modelyard server is running at http://localhost:{port}" in result.stderr


def test_cli_relative_times() -> None:
    from datetime import UTC, datetime

    from modelyard.cli.client import relative

    now = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
    assert relative("2026-11-28T12:04:00+00:00", now) == "in 4 minutes"
    assert relative("2026-11-28T10:00:00+00:00", now) == "2 hours ago"
    assert relative("2026-11-29T12:00:00+00:00", now) == "in 1 day"
    assert relative("2026-11-28T11:59:59+00:00", now) == "1 second ago"
    assert relative(None, now) is None


def test_run_ctrl_c_before_the_first_word_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stopped while the model has not said a word yet: the user is told, and the unanswered
    message is not kept in the conversation."""
    from collections.abc import Iterator

    from modelyard.cli import chat as chat_module

    def frames(*_: object) -> Iterator[dict[str, object]]:
        yield {"choices": [{"delta": {"role": "assistant"}}]}
        raise KeyboardInterrupt

    monkeypatch.setattr(chat_module, "events", frames)
    chat = chat_module.Chat("http://127.0.0.1:1", "m")
    assert chat.ask("hi") is False
    assert chat.messages == []
    assert "(stopped before the first word; nothing was kept)" in capsys.readouterr().err


def test_events_json_prints_iso_times(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from modelyard.cli.observe import _print_event

    _print_event({"id": 3, "time": 1764633600.25, "model": "m", "message": "x"}, True)
    printed = json.loads(capsys.readouterr().out)
    assert printed == {
        "id": 3,
        "time": "2025-12-02T00:00:00.250+00:00",
        "model": "m",
        "message": "x",
    }
