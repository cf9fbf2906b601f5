"""``modelyard run`` as a user types it: a prompt, piped text, and an interactive chat in a
pseudo-terminal, against a real server on the demo Gemma."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pexpect
import pytest

from tests.integration.conftest import Server, gemma


@pytest.fixture(scope="module")
def server(
    server_factory: Callable[..., Server], tmp_path_factory: pytest.TempPathFactory
) -> Server:
    # Every answer runs to --max-tokens (a base model may stop at once), and the demo
    # embedding model is there too.
    mine = tmp_path_factory.mktemp("run") / "chatty.gguf"
    mine.symlink_to(gemma())
    config = (
        f'[models.chatty]\npath = "{mine}"\nchat_template = "gemma"\nctx = 2048\n'
        "defaults = { ignore_eos = true }\n"
    )
    return server_factory(config, demo=True)


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}


def run(server: Server, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelyard", "run", *args, "--url", server.url],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        env=environment(),
    )


def requests(server: Server) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = httpx.get(f"{server.url}/api/activity").json()["requests"]
    return found


def finished(server: Server, before: int) -> dict[str, Any]:
    """The one request that finished after the first ``before`` (the server records it just
    after the client has its answer, so it is waited for)."""
    deadline = time.monotonic() + 10
    while len(done := requests(server)) <= before:
        assert time.monotonic() < deadline, "no request finished"
        time.sleep(0.02)
    (new,) = done[before:]
    return new


def test_run_with_a_prompt_streams_the_answer_and_exits(server: Server) -> None:
    before = len(requests(server))
    answered = run(server, "chatty", "Once", "upon", "a", "time", "--max-tokens", "6")
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout.strip()
    last = finished(server, before)
    assert (last["model"], last["stream"], last["completion_tokens"]) == ("chatty", True, 6)

    piped = run(server, "chatty", "Summarise:", "--max-tokens", "3", stdin="A long text " * 20)
    assert piped.returncode == 0, piped.stderr
    assert finished(server, before + 1)["prompt_tokens"] > last["prompt_tokens"] + 40


def test_run_refuses_what_it_cannot_chat_with(server: Server) -> None:
    missing = run(server, "nope", "hi")
    assert missing.returncode == 1
    assert "model 'nope' not found" in missing.stderr
    embedding = run(server, "all-minilm", "hi")
    assert embedding.returncode == 1
    assert "cannot chat" in embedding.stderr
    nothing = run(server, "chatty", stdin="")
    assert nothing.returncode == 2
    assert "no prompt" in nothing.stderr


def chat(server: Server, *args: str) -> pexpect.spawn[str]:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "modelyard", "run", "chatty", "--url", server.url, *args],
        env=environment(),
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 120),
    )
    child.expect_exact("Chatting with chatty. Type /? for help, /bye to exit.")
    child.expect_exact(">>> ")
    return child


def test_run_interactive_keeps_the_conversation_until_cleared(
    server: Server, tmp_path: Path
) -> None:
    child = chat(server, "--max-tokens", "4")
    count = len(requests(server))

    def ask(text: str) -> dict[str, Any]:
        nonlocal count
        child.sendline(text)
        child.expect_exact(">>> ")
        count += 1
        return finished(server, count - 1)

    first = ask("Hello there")
    second = ask("And again")
    # The second request carries the first exchange.
    assert second["prompt_tokens"] >= first["prompt_tokens"] + first["completion_tokens"] + 3

    child.sendline("/clear")
    child.expect_exact("Cleared the conversation.")
    child.expect_exact(">>> ")
    assert ask("Hello there")["prompt_tokens"] == first["prompt_tokens"]

    child.sendline("/set system You answer in French, always, whatever is asked.")
    child.expect_exact("Set the system message.")
    child.expect_exact(">>> ")
    child.sendline("/show system")
    child.expect_exact("You answer in French")
    child.expect_exact(">>> ")
    child.sendline("/clear")
    child.expect_exact(">>> ")
    assert ask("Hello there")["prompt_tokens"] > first["prompt_tokens"] + 8

    child.sendline('"""First line')
    child.expect_exact("... ")
    assert ask('second line"""')["prompt_tokens"] > first["prompt_tokens"]
    child.sendline("/nope")
    child.expect_exact("Unknown command '/nope'")
    child.expect_exact(">>> ")
    child.sendintr()  # Ctrl-C at the prompt does not end the chat
    child.expect_exact("Use Ctrl-D or /bye to exit.")
    child.expect_exact(">>> ")
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_run_interactive_ctrl_c_stops_the_answer_and_ctrl_d_exits(server: Server) -> None:
    child = chat(server, "--max-tokens", "2000")
    child.sendline("Tell me a long story")
    child.expect_exact("Tell me a long story")  # the terminal's echo
    before = len(requests(server))
    deadline = time.monotonic() + 30
    while not any(m["in_flight"] for m in httpx.get(f"{server.url}/api/ps").json()["models"]):
        assert time.monotonic() < deadline, "the answer never started"
        time.sleep(0.05)
    time.sleep(0.5)  # it is answering
    child.sendintr()
    child.expect_exact("(stopped the answer)")
    child.expect_exact(">>> ")
    deadline = time.monotonic() + 10
    while (ps := httpx.get(f"{server.url}/api/ps").json()["models"]) and any(
        m["in_flight"] for m in ps
    ):
        assert time.monotonic() < deadline, "the stopped answer kept generating"
        time.sleep(0.1)
    stopped = finished(server, before)
    assert stopped["cancelled"] is True
    assert stopped["completion_tokens"] is None or stopped["completion_tokens"] < 2000
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
