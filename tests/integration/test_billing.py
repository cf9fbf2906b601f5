"""The billing property on the demo model with keys on: for every inference route of every
API, each of its length fields, one and three choices, and an answer taken whole, left by
the client before it came, streamed whole, stopped by the client after three events or left
unread, what the key is
charged is what the ledger says, the balance never goes below zero, and the ledger's tokens
are what the runner's own counter (llama.cpp's ``tokens_predicted_total``) says it
generated."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Runner, Server, gemma
from tests.integration.test_accounts import admin_key, bearer

pytestmark = pytest.mark.slow

LENGTH = 6
"""Tokens per answer of a request taken whole."""
CUT_LENGTH = 60
"""Tokens per answer of a request the client stops after three events."""
GONE_LENGTH = 60
"""Tokens per answer of a stream the client leaves after 0.3 s, unread."""
LEFT_LENGTH = 400
"""Tokens per answer of a whole answer the client leaves after 0.5 s (much more than the
engine makes by then: a slot that kept working after its client left would make the rest,
uncharged)."""


@dataclass(frozen=True)
class Case:
    route: str
    knob: str
    choices: int
    mode: str
    """``whole``, ``left`` (the client leaves before a whole answer came), ``stream``,
    ``cut`` (the client stops reading a stream after three events) or ``gone`` (the client
    leaves a stream without reading any of it)."""

    def body(self) -> dict[str, Any]:
        n = {"cut": CUT_LENGTH, "gone": GONE_LENGTH, "left": LEFT_LENGTH}.get(self.mode, LENGTH)
        stream = self.mode not in ("whole", "left")
        text = "Once upon a time, in a small village,"
        if self.route in ("/v1/chat/completions", "/v1/completions"):
            body: dict[str, Any] = {"model": "demo", self.knob: n, "ignore_eos": True}
            if self.route == "/v1/completions":
                body["prompt"] = text
            else:
                body["messages"] = [{"role": "user", "content": text}]
            if self.choices > 1:
                body["n"] = self.choices
        elif self.route == "/api/chat":
            body = {"model": "demo", "messages": [{"role": "user", "content": text}],
                    "options": {self.knob: n}}  # fmt: skip
        elif self.route == "/api/generate":
            body = {"model": "demo", "prompt": text, "options": {self.knob: n}}
        elif self.route == "/v1/messages":
            body = {"model": "demo", self.knob: n, "messages": [{"role": "user", "content": text}]}
        else:
            body = {"model": "demo", self.knob: n, "input": text}
        body["stream"] = stream
        return body


def cases() -> list[Case]:
    found = []
    knobs = {
        "/v1/chat/completions": ("max_tokens", "max_completion_tokens", "n_predict"),
        "/v1/completions": ("max_tokens", "n_predict"),
        "/api/chat": ("num_predict",),
        "/api/generate": ("num_predict",),
        "/v1/messages": ("max_tokens",),
        "/v1/responses": ("max_output_tokens",),
    }
    for route, names in knobs.items():
        for knob in names:
            for choices in (1, 3) if route.startswith(("/v1/chat", "/v1/comp")) else (1,):
                for mode in ("whole", "left", "stream", "cut", "gone"):
                    found.append(Case(route, knob, choices, mode))
    return found


CONFIG = """
[models.demo]
path = "{path}"
chat_template = "gemma"
ctx = 1024
parallel = 3
keep_alive = -1
"""


@pytest.fixture(scope="module")
def billed(server_factory: Callable[..., Server]) -> tuple[Server, str, str]:
    server = server_factory(CONFIG.format(path=gemma()), env={"MODELYARD_AUTH": "keys"})
    admin = admin_key(server)
    made = httpx.post(
        f"{server.url}/api/keys",
        json={"name": "payer", "balance": 10**6},
        headers=bearer(admin),
    )
    assert made.status_code == 201, made.text
    return server, admin, made.json()["key"]


def predicted(runner: Runner) -> int:
    text = httpx.get(f"{runner.url}/metrics", headers=runner.headers).text
    (line,) = [x for x in text.splitlines() if x.startswith("llamacpp:tokens_predicted_total")]
    return int(float(line.split()[1]))


def settled(runner: Runner) -> None:
    """Waits until no slot of the runner is working (a stopped stream's slot frees a moment
    after the client left)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        slots = httpx.get(f"{runner.url}/slots", headers=runner.headers).json()
        if not any(slot.get("is_processing") for slot in slots):
            return
        time.sleep(0.05)
    raise AssertionError("a slot kept working")


def payer(server: Server, admin: str) -> tuple[int, dict[str, Any]]:
    """The key's balance and its newest ledger row."""
    keys = httpx.get(f"{server.url}/api/keys", headers=bearer(admin)).json()["keys"]
    (record,) = [k for k in keys if k["name"] == "payer"]
    rows = httpx.get(f"{server.url}/api/usage?key=payer&limit=1", headers=bearer(admin)).json()[
        "rows"
    ]
    return record["balance"], rows[0] if rows else {}


def send(server: Server, key: str, case: Case) -> None:
    url = f"{server.url}{case.route}"
    if case.mode == "gone":
        with httpx.stream("POST", url, json=case.body(), headers=bearer(key), timeout=60) as got:
            assert got.status_code == 200
            time.sleep(0.3)  # and leaves without reading
        return
    if case.mode == "left":
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                url, json=case.body(), headers=bearer(key), timeout=httpx.Timeout(60, read=0.5)
            )
        return
    if case.mode == "whole":
        answer = httpx.post(url, json=case.body(), headers=bearer(key), timeout=60)
        assert answer.status_code == 200, answer.text
        return
    with httpx.stream("POST", url, json=case.body(), headers=bearer(key), timeout=60) as answer:
        assert answer.status_code == 200, answer.read()
        events = 0
        for line in answer.iter_lines():
            data = line.removeprefix("data: ")
            if data.startswith("{"):
                events += 1
                if "error" in json.loads(data):
                    raise AssertionError(line)
            if case.mode == "cut" and events == 3:
                break  # the client leaves


@pytest.mark.timeout(600)
def test_billing_charges_what_the_runner_generated(billed: tuple[Server, str, str]) -> None:
    server, admin, key = billed
    send(server, key, Case("/v1/chat/completions", "max_tokens", 1, "whole"))  # loads it
    runner = server.runner("demo", bearer(admin))
    checked = 0
    prompts: dict[str, int] = {}
    for case in cases():
        settled(runner)
        before_tokens = predicted(runner)
        before_balance, before_row = payer(server, admin)
        send(server, key, case)
        deadline = time.monotonic() + 10
        while (row := payer(server, admin)[1]) == before_row and time.monotonic() < deadline:
            time.sleep(0.05)
        settled(runner)
        generated = predicted(runner) - before_tokens
        balance, row = payer(server, admin)
        charged = before_balance - balance
        label = f"{case}: row {row}, runner generated {generated}"
        assert balance >= 0, label
        assert charged == row["cost"] == row["prompt_tokens"] + row["completion_tokens"], label
        if case.mode in ("gone", "left"):
            # Left before the gateway read anything, or a little: what the engine made
            # before it saw the client leave is the runner's alone, within the prompt's size
            # (the bound the billing promise allows).
            prompt = prompts[case.route]
            assert row["prompt_tokens"] in (0, prompt), label
            assert 0 <= generated - row["completion_tokens"] <= prompt, label
            assert generated < LEFT_LENGTH * case.choices, label
            checked += 1
            continue
        # The prompt the engine read, once however many answers, whole or stopped.
        assert prompts.setdefault(case.route, row["prompt_tokens"]) == row["prompt_tokens"], label
        if case.mode == "cut":
            # What the engine made after the last event the gateway read and before it saw
            # the client leave is counted by the runner, not the ledger: within the prompt's.
            assert row["completion_tokens"] >= 1, label
            assert 0 <= generated - row["completion_tokens"] <= row["prompt_tokens"], label
            assert row["completion_tokens"] < CUT_LENGTH * case.choices, label
        else:
            assert row["completion_tokens"] == generated, label
            if case.route in ("/v1/chat/completions", "/v1/completions"):  # ignore_eos
                assert generated == LENGTH * case.choices, label
            else:
                assert generated <= LENGTH, label
        checked += 1
    assert checked == 70
