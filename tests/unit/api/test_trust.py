"""A shared server keeps its word: keys never stronger than their makers, residency an
admin's right, brakes on logins and sign-ups, charges by what was generated, engine failures
told in every dialect, and bad input a clear 4xx (through the app and the canned responder)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelyard.accounts.identity import Role
from modelyard.accounts.service import Accounts
from tests.unit.api.conftest import Harness, canned_spec
from tests.unit.api.test_auth import bearer, make_key

FAIL = "x_error_after:3"
"""The canned responder's cue to send llama.cpp's error event after three chunks."""
CHAT = {"model": "canned", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


async def usage_rows(h: Harness, admin: str) -> list[dict[str, Any]]:
    accounts: Accounts = h.app.state.accounts
    await accounts.ledger.flush()
    answer = await h.call("/api/usage?limit=1000", method="GET", headers=bearer(admin))
    assert answer.status == 200, answer.body
    rows: list[dict[str, Any]] = answer.json()["rows"]
    return rows


async def balance(h: Harness, name: str) -> int:
    accounts: Accounts = h.app.state.accounts
    await accounts.ledger.flush()
    value: int = (await accounts.store.find_key(name))["balance"]
    return value


async def test_trust_a_key_cannot_mint_a_stronger_one(make_harness: Callable) -> None:
    """Defect 1: a restricted key of a user made a key without its model list, balance,
    rpm and expiry. Keys cannot make keys; the user, logged in, makes keys that its own
    models and limits bind."""
    async with make_harness(auth_mode="keys") as h:
        accounts: Accounts = h.app.state.accounts
        admin = await make_key(h, Role.ADMIN, name="root")
        made = await h.call(
            "/api/users",
            {"name": "ann", "password": "correct horse", "models": ["other"], "rpm": 2},
            headers=bearer(admin),
        )
        assert made.status == 201
        narrow = await make_key(h, name="narrow", user="ann", models=["other"], balance=10, rpm=1)
        before = len(await accounts.store.keys())
        minted = await h.call("/api/keys", {"name": "free"}, headers=bearer(narrow))
        assert minted.status == 403
        assert "cannot make another" in minted.json()["error"]["message"]
        assert len(await accounts.store.keys()) == before  # nothing was made

        login = await h.call("/api/login", {"username": "ann", "password": "correct horse"})
        session = login.json()["token"]
        laptop = await h.call("/api/keys", {"name": "laptop"}, headers=bearer(session))
        assert laptop.status == 201
        key = laptop.json()["key"]
        refused = await h.call("/v1/chat/completions", CHAT, headers=bearer(key))
        assert refused.status == 403  # the user's models bind the key it made
        assert refused.json()["error"]["code"] == "model_not_allowed"
        await h.call("/api/users/ann", {"enabled": False}, method="PATCH", headers=bearer(admin))
        gone = await h.call("/v1/models", method="GET", headers=bearer(key))
        assert gone.status == 401  # and it dies with its user


async def test_trust_residency_is_an_admins_right(make_harness: Callable, tmp_path: Path) -> None:
    """Defect 4: a user's empty Ollama request unloaded or pinned a model, unlimited."""
    spec = canned_spec(tmp_path, keep_alive=60.0)
    async with make_harness(spec, auth_mode="keys") as h:
        admin = await make_key(h, Role.ADMIN, name="root")
        user = await make_key(h, name="u", rpm=2, balance=1000)
        assert (await h.call("/api/chat", {"model": "canned"}, headers=bearer(user))).status == 200
        assert h.scheduler.state("canned") == "ready"
        unload = {"model": "canned", "keep_alive": 0}
        refused = await h.call("/api/generate", unload, headers=bearer(user))
        assert refused.status == 403
        assert h.scheduler.state("canned") == "ready"
        # The load counted as a request: the second of rpm 2 is the last.
        forever = {"model": "canned", "keep_alive": -1}
        assert (await h.call("/api/generate", forever, headers=bearer(user))).status == 200
        third = await h.call("/api/generate", {"model": "canned"}, headers=bearer(user))
        assert third.status == 429
        (status,) = [s for s in h.scheduler.status() if s.name == "canned"]
        # keep_alive -1 from a user did not keep it forever: the model's own minute holds.
        assert status.expires_at is not None
        assert status.expires_at - time.time() < 61
        rows = await usage_rows(h, admin)
        loads = [r for r in rows if r["route"] in ("/api/chat", "/api/generate")]
        # Each is a request in the ledger: two loads, the refused unload, the rate-limited.
        assert sorted(r["status"] for r in loads) == [200, 200, 403, 429]
        assert await balance(h, "u") == 1000  # a load generates nothing, costs nothing
        by_admin = await h.call("/api/generate", unload, headers=bearer(admin))
        assert by_admin.status == 200
        assert h.scheduler.state("canned") == "stopped"


async def test_trust_a_users_keep_alive_is_capped(make_harness: Callable, tmp_path: Path) -> None:
    spec = canned_spec(tmp_path, keep_alive=60.0)
    async with make_harness(spec, auth_mode="keys", max_keep_alive=600.0) as h:
        user = await make_key(h, name="u")
        chat = {**CHAT, "keep_alive": "10h"}
        assert (await h.call("/v1/chat/completions", chat, headers=bearer(user))).status == 200
        (status,) = [s for s in h.scheduler.status() if s.name == "canned"]
        assert status.expires_at is not None
        left = status.expires_at - time.time()
        assert 500 < left <= 600  # lengthened to the cap, not to ten hours
        short = {**CHAT, "keep_alive": 0}
        assert (await h.call("/v1/chat/completions", short, headers=bearer(user))).status == 200
        assert h.scheduler.state("canned") == "ready"  # nor shortened for everyone


async def test_trust_wrong_passwords_slow_down(make_harness: Callable) -> None:
    async with make_harness(auth_mode="keys", login_attempts=2) as h:
        admin = await make_key(h, Role.ADMIN, name="root")
        user = {"name": "bob", "password": "correct horse"}
        await h.call("/api/users", user, headers=bearer(admin))
        wrong = {"username": "bob", "password": "wrong horse!"}
        right = {"username": "bob", "password": "correct horse"}
        assert [(await h.call("/api/login", wrong)).status for _ in range(2)] == [401, 401]
        locked = await h.call("/api/login", right)  # even the right one waits
        assert locked.status == 429
        assert 0 < float(locked.headers["retry-after"]) <= 1
        await asyncio.sleep(1.05)
        assert (await h.call("/api/login", wrong)).status == 401
        again = await h.call("/api/login", right)
        assert again.status == 429  # the next wait doubled
        assert 1 < float(again.headers["retry-after"]) <= 2
        await asyncio.sleep(2.05)
        assert (await h.call("/api/login", right)).status == 200


async def test_trust_signups_are_braked_and_can_wait_for_approval(make_harness: Callable) -> None:
    async with make_harness(
        auth_mode="keys", allow_signup=True, signups_per_hour=2, signup_approval=True
    ) as h:
        admin = await make_key(h, Role.ADMIN, name="root")
        made = [
            await h.call("/api/signup", {"username": f"s{n}", "password": "long enough"})
            for n in range(3)
        ]
        assert [m.status for m in made] == [201, 201, 429]
        assert "retry-after" in made[2].headers
        assert made[0].json()["enabled"] is False
        login = {"username": "s0", "password": "long enough"}
        pending = await h.call("/api/login", login)
        assert pending.status == 401
        assert "admin to enable" in pending.json()["error"]["message"]
        await h.call("/api/users/s0", {"enabled": True}, method="PATCH", headers=bearer(admin))
        assert (await h.call("/api/login", login)).status == 200


async def test_trust_engine_fields_cannot_outrun_the_balance(make_harness: Callable) -> None:
    """Defect 2: ``max_tokens: 1, n_predict: 150, ignore_eos`` generated 150 and charged 79."""
    async with make_harness(auth_mode="keys") as h:
        key = await make_key(h, name="k", balance=1000)
        body = {**CHAT, "stream": True, "max_tokens": 1, "n_predict": 150, "ignore_eos": True,
                "x_chunks": 150, "x_echo": False}  # fmt: skip
        answer = await h.call("/v1/chat/completions", body, headers=bearer(key))
        tokens = [e for e in answer.events() if e != "[DONE]" and e.get("choices")]
        assert len(tokens) == 2  # one token and the end: the engine was sent max_tokens 1
        echo = await h.call("/v1/chat/completions", {**body, "x_echo": True, "stream": False},
                            headers=bearer(key))  # fmt: skip
        sent = echo.json()["received"]
        assert sent["max_tokens"] == 1
        assert "n_predict" not in sent


async def test_trust_stopped_streams_are_charged_what_was_generated(
    make_harness: Callable,
) -> None:
    """Defect 5: streams cut after 3 chunks were charged their whole reservation; with keys
    off the activity said 0 + 0."""
    async with make_harness(auth_mode="keys") as h:
        admin = await make_key(h, Role.ADMIN, name="root")
        await make_key(h, name="k", balance=10_000)
        key = (await h.app.state.accounts.create_key(name="k2", role=Role.USER, balance=10_000))[0]
        body = {**CHAT, "stream": True, "max_tokens": 500, "x_chunks": 400, "x_delay_ms": 20}
        exchange = h.exchange("/v1/chat/completions", body, headers=bearer(key))
        await exchange.until(3)
        exchange.leave()
        await exchange.done
        rows = [r for r in await usage_rows(h, admin) if r["key_name"] == "k2"]
        (row,) = rows
        assert row["prompt_tokens"] == 5  # the engine's, not the body's size
        assert 3 <= row["completion_tokens"] <= 6
        assert row["cost"] == row["prompt_tokens"] + row["completion_tokens"]
        assert await balance(h, "k2") == 10_000 - row["cost"]
        (activity,) = [a for a in h.app.state.telemetry.activity.items() if a.cancelled]
        assert activity.completion_tokens == row["completion_tokens"]


async def test_trust_stopped_streams_are_recorded_with_keys_off(make_harness: Callable) -> None:
    async with make_harness() as h:
        body = {**CHAT, "stream": True, "max_tokens": 500, "x_chunks": 400, "x_delay_ms": 20}
        exchange = h.exchange("/v1/chat/completions", body)
        await exchange.until(3)
        exchange.leave()
        await exchange.done
        (trace,) = h.app.state.telemetry.activity.items()
        assert trace.prompt_tokens == 5
        assert trace.completion_tokens >= 3


@pytest.mark.parametrize(
    ("route", "body", "check"),
    [
        (
            "/api/chat",
            {"model": "canned", "messages": [{"role": "user", "content": FAIL}]},
            lambda lines: (
                "error" in json.loads(lines[-1])
                and not any(json.loads(line).get("done") for line in lines)
            ),
        ),
        (
            "/v1/messages",
            {"model": "canned", "max_tokens": 50, "messages": [{"role": "user", "content": FAIL}]},
            lambda lines: (
                "event: error" in "\n".join(lines) and "message_stop" not in "\n".join(lines)
            ),
        ),
        (
            "/v1/responses",
            {"model": "canned", "input": FAIL},
            lambda lines: (
                "response.failed" in "\n".join(lines)
                and "response.completed" not in "\n".join(lines)
            ),
        ),
        (
            "/v1/chat/completions",
            {"model": "canned", "messages": [{"role": "user", "content": FAIL}]},
            lambda lines: '"error"' in "\n".join(lines),
        ),
    ],
)
async def test_trust_an_engine_failure_mid_stream_is_told_in_every_dialect(
    make_harness: Callable, route: str, body: dict[str, Any], check: Callable[[list[str]], bool]
) -> None:
    """Defect 6: Ollama's stream ended ``done: true, done_reason: stop`` with no error."""
    async with make_harness() as h:
        answer = await h.call(route, {**body, "stream": True})
        lines = [line for line in answer.body.decode().splitlines() if line.strip()]
        assert check(lines), lines


async def test_trust_bad_input_is_a_clear_4xx(make_harness: Callable) -> None:
    """The small items of defect 8."""
    async with make_harness(auth_mode="keys") as h:
        admin = await make_key(h, Role.ADMIN, name="root")
        user = await make_key(h, name="narrow", models=["canned"])
        as_string = await h.call(
            "/v1/chat/completions", {**CHAT, "max_tokens": "5"}, headers=bearer(user)
        )
        assert as_string.status == 400
        assert as_string.json()["error"]["param"] == "max_tokens"
        unknown = await h.call(
            "/v1/chat/completions", {**CHAT, "model": "nope"}, headers=bearer(user)
        )
        assert unknown.status == 404
        assert "canned" not in unknown.json()["error"]["message"]  # no list of models
        many = {"model": "canned", "input": ["x"] * 2049}
        assert (await h.call("/v1/embeddings", many, headers=bearer(user))).status == 400
        tpm = await h.call("/api/keys", {"name": "t", "tpm": True}, headers=bearer(admin))
        assert tpm.status == 400
        named = await h.call("/api/usage?key=narrow", method="GET", headers=bearer(admin))
        assert named.status == 200, named.body


async def test_trust_no_user_or_monitor_route_changes_residency_keys_or_files(
    make_harness: Callable, tmp_path: Path
) -> None:
    """Walks every state-changing effect (load, unload, pin, keep-alive, keys, users, pull,
    delete, reload, an engine's own API) through every route a ``user`` or ``monitor``
    credential can reach, and checks the effect did not happen (not only the status)."""
    spec = canned_spec(tmp_path, keep_alive=60.0)
    async with make_harness(spec, auth_mode="keys") as h:
        accounts: Accounts = h.app.state.accounts
        admin = await make_key(h, Role.ADMIN, name="root")
        assert (await h.call("/api/load", {"model": "canned"}, headers=bearer(admin))).status == 200

        def residency() -> tuple[str, bool, float | None]:
            (status,) = [s for s in h.scheduler.status() if s.name == "canned"]
            return status.state, status.pinned, status.expires_at

        chats = [
            ("/v1/chat/completions", {**CHAT}),
            ("/v1/completions", {"model": "canned", "prompt": "hi", "max_tokens": 2}),
            ("/v1/messages", {"model": "canned", "max_tokens": 2,
                              "messages": [{"role": "user", "content": "hi"}]}),
            ("/api/chat", {"model": "canned", "messages": [{"role": "user", "content": "hi"}]}),
            ("/api/generate", {"model": "canned", "prompt": "hi"}),
            ("/api/chat", {"model": "canned"}),
            ("/api/generate", {"model": "canned"}),
        ]  # fmt: skip
        admin_only = [
            ("POST", "/api/load", {"model": "canned", "keep_alive": -1}),
            ("POST", "/api/unload", {"model": "canned"}),
            ("POST", "/api/pin", {"model": "canned"}),
            ("POST", "/api/pull", {"model": "owner/repo"}),
            ("DELETE", "/api/delete", {"model": "canned", "force": True}),
            ("POST", "/api/reload", {}),
            ("POST", "/api/users", {"name": "mallory", "role": "admin"}),
            ("PATCH", "/api/keys/root", {"enabled": False}),
            ("POST", "/upstream/canned/slots/0?action=erase", {}),
        ]
        for role in (Role.USER, Role.MONITOR):
            key = await make_key(h, role, name=f"{role}-key", balance=10**6)
            keys_before = len(await accounts.store.keys())
            for method, path, body in admin_only:
                answer = await h.call(path, body, method=method, headers=bearer(key))
                assert answer.status == 403, f"{role} {method} {path}: {answer.body!r}"
            made = await h.call("/api/keys", {"name": "minted"}, headers=bearer(key))
            assert made.status == 403
            assert len(await accounts.store.keys()) == keys_before
            assert await accounts.store.users() == []
            before = residency()
            for keep_alive in (0, -1, "10h", "1s"):
                for path, body in chats:
                    await h.call(path, {**body, "keep_alive": keep_alive}, headers=bearer(key))
                state, pinned, expires = residency()
                assert (state, pinned) == ("ready", False), (role, keep_alive)
                assert expires is not None
                assert expires - time.time() <= 61, (role, keep_alive)  # the model's own
            assert before[:2] == residency()[:2]
        assert spec.path is not None
        assert spec.path.exists()  # not deleted
        assert not list((tmp_path / "models").glob("**/*"))  # nothing pulled
