"""Warm swaps on the real demo model: a conversation's KV state is saved when its model is
unloaded and restored when it loads again, so that the next turn reads only what is new,
and answers exactly as it would have without the swap."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Server, gemma

pytestmark = pytest.mark.integration

_CONFIG = """
[server]
kv_cache_disk = "{budget}"

[models.gemma]
path = "{path}"
chat_template = "gemma"
ctx = 2048
parallel = 2
"""

_TEXT = " ".join(
    f"Note {i}: the ferry to island {i % 7} leaves at {i % 12 + 1} o'clock." for i in range(40)
)


def _turn(server: Server, messages: list[dict[str, str]]) -> dict[str, Any]:
    answer = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "gemma", "messages": messages, "max_tokens": 12, "temperature": 0},
        timeout=300,
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def _cached(body: dict[str, Any]) -> int:
    return int(body["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0))


def _unload(server: Server) -> None:
    answer = httpx.post(f"{server.url}/api/unload", json={"model": "gemma"}, timeout=60)
    assert answer.status_code == 200, answer.text


def _events(server: Server, kind: str) -> list[dict[str, Any]]:
    events = httpx.get(f"{server.url}/api/events", params={"model": "gemma"}).json()["events"]
    return [e for e in events if e["type"] == kind]


def _metric(server: Server, line_start: str) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture(scope="module")
def warm(server_factory: Callable[..., Server]) -> Server:
    return server_factory(_CONFIG.format(path=gemma(), budget="1GiB"))


def _conversation(server: Server) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """A first turn, then the second asked twice without a swap: the reference."""
    messages = [{"role": "user", "content": _TEXT + "\nWhen does the ferry to island 3 leave?"}]
    first = _turn(server, messages)
    messages += [
        {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
        {"role": "user", "content": "And to island 5?"},
    ]
    return messages, _turn(server, messages)


def test_the_next_turn_after_a_swap_reads_only_what_is_new_and_answers_the_same(
    warm: Server,
) -> None:
    messages, reference = _conversation(warm)
    prompt = reference["usage"]["prompt_tokens"]
    assert prompt > 500
    _unload(warm)
    (saved,) = _events(warm, "kv_saved")[-1:]
    assert saved["states"] >= 1
    assert saved["tokens"] >= prompt
    assert list((warm.home / "kv").glob("*.bin"))
    shown = httpx.post(f"{warm.url}/api/show", json={"model": "gemma"}).json()["warm_swaps"]
    assert shown["on"]
    assert shown["states"] >= 1
    assert shown["tokens"] >= prompt
    # modelyard show says it in a row of its own.
    printed = subprocess.run(
        [sys.executable, "-m", "modelyard", "show", "gemma", "--url", warm.url],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
    ).stdout  # fmt: skip
    assert "warm swaps" in printed
    assert "conversation(s) saved" in printed

    after = _turn(warm, messages)  # loads the model again, and restores
    assert (
        after["choices"][0]["message"]["content"] == reference["choices"][0]["message"]["content"]
    )
    # The engine's own count: the whole conversation but the last few tokens came from disk.
    assert _cached(after) >= prompt - 64, after["usage"]
    (restored,) = _events(warm, "kv_restored")[-1:]
    assert restored["states"] >= 1
    assert _metric(warm, 'modelyard_kv_restores_total{model="gemma",outcome="hit"}') >= 1
    assert _metric(warm, 'modelyard_kv_states_total{action="saved",model="gemma"}') >= 1


def test_a_corrupt_or_truncated_state_is_deleted_and_never_used(warm: Server) -> None:
    messages, reference = _conversation(warm)
    expected = reference["choices"][0]["message"]["content"]
    for damage in ("corrupt", "truncated"):
        _unload(warm)
        states = sorted((warm.home / "kv").glob("*.bin"))
        assert states
        for path in states:
            data = bytearray(path.read_bytes())
            if damage == "corrupt":
                data[len(data) // 2] ^= 0xFF
                path.write_bytes(bytes(data))
            else:
                path.write_bytes(bytes(data[: len(data) - 4096]))
        after = _turn(warm, messages)
        assert after["choices"][0]["message"]["content"] == expected
        assert _cached(after) == 0, after["usage"]  # read again in full: nothing was restored
        discarded = _events(warm, "kv_discarded")[-1]
        assert ("checksum" if damage == "corrupt" else "truncated") in discarded["reason"]
        assert not any(path.exists() for path in states)
    assert _metric(warm, 'modelyard_kv_restores_total{model="gemma",outcome="miss"}') >= 2


def test_a_state_saved_with_another_context_is_deleted_and_the_budget_holds(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    # A slot's state takes 30 to 45 MB here: a 60 MB budget keeps one of two.
    server = server_factory(_CONFIG.format(path=gemma(), budget="60MB"))
    messages, reference = _conversation(server)
    other = [{"role": "user", "content": _TEXT.replace("ferry", "bus") + "\nWhich bus is first?"}]
    _turn(server, other)  # another conversation, in the other slot
    _unload(server)
    (saved,) = _events(server, "kv_saved")
    assert saved["states"] == 2
    assert "over kv_cache_disk" in _events(server, "kv_discarded")[-1]["reason"]
    kv = server.home / "kv"
    sizes = [p.stat().st_size for p in kv.glob("*.bin")]
    assert len(sizes) == 1
    assert sum(sizes) <= 60_000_000
    # The catalog changes the model's context: what was saved for the old one is useless.
    config = Path(str(server.argv[server.argv.index("--config") + 1]))
    config.write_text(config.read_text().replace("ctx = 2048", "ctx = 3072"))
    assert httpx.post(f"{server.url}/api/reload", timeout=60).status_code == 200
    after = _turn(server, messages)
    assert (
        after["choices"][0]["message"]["content"] == reference["choices"][0]["message"]["content"]
    )
    assert _cached(after) == 0
    discarded = _events(server, "kv_discarded")[-1]
    assert "another setup" in discarded["reason"]
    assert not list(kv.glob("*.bin"))
