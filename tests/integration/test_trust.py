"""A shared server keeps its word, against a real ``modelyard serve`` on the demo models with
keys on: each defect once found by trying it as an attacker would, tried again."""

from __future__ import annotations

import gzip
import json
import subprocess
import time
from collections.abc import Callable

import httpx
import pytest

from tests.integration.conftest import Server
from tests.integration.test_accounts import admin_key, bearer

pytestmark = pytest.mark.integration

CONFIG = """
[auth]
mode = "keys"
allow_signup = true
signups_per_hour = 2
login_attempts = 2
"""
CHAT = {"model": "demo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def shared(server_factory: Callable[..., Server]) -> tuple[Server, str]:
    server = server_factory(CONFIG, demo=True)
    return server, admin_key(server)


def post(server: Server, path: str, body: object, key: str = "") -> httpx.Response:
    """``key`` empty: none sent (login, sign-up)."""
    headers = bearer(key) if key else {}
    return httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=60)


def test_trust_real_keys_never_outgrow_their_maker(shared: tuple[Server, str]) -> None:
    server, admin = shared
    user = {"name": "ann", "password": "correct horse", "models": ["all-minilm*"]}
    assert post(server, "/api/users", user, admin).status_code == 201
    narrow = post(
        server, "/api/keys", {"name": "narrow", "user": "ann", "balance": 10, "rpm": 1}, admin
    ).json()["key"]
    minted = post(server, "/api/keys", {"name": "free"}, narrow)
    assert minted.status_code == 403
    session = post(server, "/api/login", {"username": "ann", "password": "correct horse"})
    laptop = post(server, "/api/keys", {"name": "laptop"}, session.json()["token"])
    assert laptop.status_code == 201
    refused = post(server, "/v1/chat/completions", CHAT, laptop.json()["key"])
    assert refused.status_code == 403  # ann's models bind the key she made


def test_trust_real_residency_is_an_admins(shared: tuple[Server, str]) -> None:
    server, admin = shared
    user = post(server, "/api/keys", {"name": "resident", "rpm": 100}, admin).json()["key"]
    assert post(server, "/api/generate", {"model": "demo"}, user).status_code == 200
    unload = post(server, "/api/generate", {"model": "demo", "keep_alive": 0}, user)
    assert unload.status_code == 403
    pin = post(server, "/api/chat", {"model": "demo", "keep_alive": -1}, user)
    assert pin.status_code == 200
    (demo,) = [m for m in server.ps(bearer(admin)) if m["name"] == "gemma-3-270m"]
    assert demo["state"] == "ready"
    assert demo["expires_at"] is not None  # the model's own five minutes, not forever


def test_trust_real_brakes_on_passwords_and_signups(shared: tuple[Server, str]) -> None:
    server, admin = shared
    post(server, "/api/users", {"name": "bob", "password": "correct horse"}, admin)
    wrong = {"username": "bob", "password": "wrong horse!"}
    statuses = [post(server, "/api/login", wrong).status_code for _ in range(3)]
    assert statuses == [401, 401, 429]
    time.sleep(1.1)  # the first wait; a right password then clears the count
    right = {"username": "bob", "password": "correct horse"}
    assert post(server, "/api/login", right).status_code == 200
    signups = [
        post(server, "/api/signup", {"username": f"s{n}", "password": "long enough"})
        for n in range(3)
    ]
    assert [s.status_code for s in signups] == [201, 201, 429]
    assert "retry-after" in signups[2].headers


def test_trust_real_bad_input_is_a_clear_4xx(shared: tuple[Server, str]) -> None:
    server, admin = shared
    key = post(server, "/api/keys", {"name": "small", "models": ["demo"]}, admin).json()["key"]
    string = post(server, "/v1/chat/completions", {**CHAT, "max_tokens": "5"}, key)
    assert string.status_code == 400
    assert string.json()["error"]["param"] == "max_tokens"
    unknown = post(server, "/v1/chat/completions", {**CHAT, "model": "nope"}, key)
    assert unknown.status_code == 404
    assert "minilm" not in unknown.text.lower()
    started = time.monotonic()
    many = post(server, "/v1/embeddings", {"model": "all-minilm", "input": ["x"] * 100_000}, admin)
    assert many.status_code == 400
    assert time.monotonic() - started < 10
    assert post(server, "/api/keys", {"name": "t", "tpm": True}, admin).status_code == 400
    named = httpx.get(f"{server.url}/api/usage?key=small", headers=bearer(admin))
    assert named.status_code == 200
    huge = httpx.get(f"{server.url}/v1/models", headers={**bearer(key), "X-Big": "a" * 40_000})
    assert huge.status_code == 431
    packed = gzip.compress(json.dumps({"content": "hello world"}).encode())
    tokens = httpx.post(
        f"{server.url}/upstream/demo/tokenize",
        content=packed,
        headers={**bearer(admin), "Content-Type": "application/json", "Content-Encoding": "gzip"},
        timeout=60,
    )
    assert tokens.status_code == 200, tokens.text
    assert len(tokens.json()["tokens"]) >= 2
    assert "Traceback" not in server.log.read_text()


def test_trust_real_ollamas_curl_examples_work(shared: tuple[Server, str]) -> None:
    """Ollama's documentation: ``curl http://localhost:11434/api/show -d '{"model": …}'``
    (curl's ``-d`` sends a form's content type)."""
    server, admin = shared
    shown = subprocess.run(
        ["curl", "-s", "-H", f"Authorization: Bearer {admin}", f"{server.url}/api/show",
         "-d", '{"model": "demo"}'],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert json.loads(shown.stdout)["capabilities"]
    evil = httpx.post(
        f"{server.url}/api/show",
        content=b'{"model": "demo"}',
        headers={**bearer(admin), "Origin": "http://evil.example",
                 "Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert evil.status_code == 403
