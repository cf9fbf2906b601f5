"""Several gateways in front of one set of runners, for real: two ``modelyard serve
--gateways`` processes sharing a PostgreSQL server and a config, keys required.

The first leads (it owns the scheduler and starts the runner); the second serves the same
models through leases from it, going straight to the runner, with the same keys, balances
and ledger, and passes every other request on to it. When the leader is killed, the other
gateway leads within seconds and serves on; the old leader, started again, follows.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.integration.conftest import Server, gemma, start_server
from tests.integration.raynodes import until
from tests.postgres import PostgresServer

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

CONFIG = (
    "[memory]\nmin_residency = 0\n\n"
    f'[models.chat]\npath = "{gemma()}"\nchat_template = "gemma"\nctx = 512\n'
    'keep_alive = "1h"\n'
)


@dataclass
class Pair:
    leader: Server
    follower: Server
    admin: dict[str, str]
    tmp: Path
    env: dict[str, str | None]


def _gateway(tmp: Path, env: dict[str, str | None]) -> Server:
    return start_server(tmp, CONFIG, "--gateways", env=env)


@pytest.fixture(scope="module")
def pair(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    url = asyncio.run(postgres.new_database())
    env: dict[str, str | None] = {"MODELYARD_AUTH": "keys", "MODELYARD_DATABASE_URL": url}
    tmp = tmp_path_factory.mktemp("gateways")
    leader = _gateway(tmp / "a", env)
    printed = [
        line.strip()
        for line in leader.log.read_text().splitlines()
        if line.strip().startswith("my-")
    ]
    assert printed, leader.log.read_text()
    follower = _gateway(tmp / "b", env)
    found = Pair(leader, follower, {"Authorization": f"Bearer {printed[0]}"}, tmp, env)
    try:
        yield found
    finally:
        found.leader.stop()
        found.follower.stop()


def _chat(url: str, key: dict[str, str], stream: bool = False) -> httpx.Response:
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=key, timeout=60)


def _new_key(server: Server, admin: dict[str, str], **fields: object) -> dict[str, str]:
    """A user key made by asking ``server``; its ``Authorization`` header."""
    made = httpx.post(
        f"{server.url}/api/keys", json={"role": "user", **fields}, headers=admin, timeout=10
    )
    assert made.status_code in (200, 201), made.text
    return {"Authorization": f"Bearer {made.json()['key']}"}


def _said(server: Server, words: str) -> None:
    """``server``'s log says ``words`` (soon: log lines are written by a thread)."""
    until(lambda: words in server.log.read_text(), 5, lambda: server.log.read_text()[-3000:])


def _get(server: Server, path: str, headers: dict[str, str]) -> Any:
    answer = httpx.get(f"{server.url}{path}", headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_follower_serves_through_the_leaders_runner_with_the_same_keys(pair: Pair) -> None:
    leader, follower, admin = pair.leader, pair.follower, pair.admin
    _said(leader, f"gateway {leader.url} leads")
    _said(follower, f"follows the gateway at {leader.url}")

    # Asked of the follower, the keys' routes are the leader's: the key made there works on
    # both, and so does its balance.
    payer = _new_key(follower, admin, name="payer", balance=100000)
    assert _chat(follower.url, {"Authorization": "Bearer my-not-a-key"}).status_code == 401

    answer = _chat(follower.url, payer)
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]
    request_id = answer.headers["x-request-id"]

    # The leader loaded the model for the follower's request and lent it; the follower went
    # to the runner itself (the leader's access log never saw the request).
    events = _get(leader, "/api/events?model=chat", admin)["events"]
    assert any(request_id in json.dumps(e) for e in events), events
    ps = _get(follower, "/api/ps", admin)["models"]  # passed on to the leader
    assert [m["name"] for m in ps] == ["chat"]

    # Leases are lent to the gateways alone: a client asking the leader gets nothing, and a
    # follower passes no such call on (it would vouch for it).
    call = {"id": "x", "gateway": "http://me", "model": "chat"}
    for server, status in ((leader, 401), (follower, 404)):
        for key in (admin, payer, {}):
            asked = httpx.post(f"{server.url}/api/gateway/lease", json=call, headers=key)
            assert asked.status_code == status, asked.text
            assert "base_url" not in asked.text

    streamed = _chat(follower.url, payer, stream=True)
    assert streamed.status_code == 200
    frames = [line for line in streamed.text.splitlines() if line.startswith("data: {")]
    stream_usage = json.loads(frames[-1][6:])["usage"]
    assert streamed.text.rstrip().endswith("data: [DONE]")

    # Charged exactly, in the one ledger, whichever gateway served.
    spent = usage["total_tokens"] + stream_usage["total_tokens"]

    def settled() -> bool:
        keys = _get(leader, "/api/keys", admin)["keys"]
        (row,) = [k for k in keys if k["name"] == "payer"]
        return int(row["balance"]) == 100000 - spent

    until(settled, 10, lambda: str(_get(leader, "/api/keys", admin)))
    rows = _get(leader, "/api/usage?key=payer", admin)["rows"]
    tokens = sorted((r["prompt_tokens"], r["completion_tokens"]) for r in rows)
    assert tokens == sorted(
        (u["prompt_tokens"], u["completion_tokens"]) for u in (usage, stream_usage)
    )


def test_a_keys_rate_limit_holds_across_the_gateways(pair: Pair) -> None:
    leader, follower, admin = pair.leader, pair.follower, pair.admin
    limited = _new_key(leader, admin, name="limited", rpm=3)
    for server in (follower, leader, follower):
        answer = _chat(server.url, limited)
        assert answer.status_code == 200, answer.text
    assert answer.headers["x-ratelimit-remaining-requests"] == "0"
    for server in (follower, leader):
        refused = _chat(server.url, limited)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert "3 requests per minute" in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after"]) > 0
        assert refused.headers["x-ratelimit-limit-requests"] == "3"


def test_when_the_leader_dies_the_follower_leads_and_the_old_leader_follows(pair: Pair) -> None:
    leader, follower, admin = pair.leader, pair.follower, pair.admin
    assert _chat(follower.url, admin).status_code == 200
    (loaded,) = _get(leader, "/api/ps", admin)["models"]
    runner = psutil.Process(int(loaded["pid"]))

    leader.process.send_signal(signal.SIGKILL)
    leader.process.wait(10)
    killed = time.monotonic()
    until(lambda: not runner.is_running() or runner.status() == "zombie", 15, lambda: "runner")

    def served() -> bool:
        return _chat(follower.url, admin).status_code == 200

    until(served, 60, lambda: follower.log.read_text()[-3000:])
    took = time.monotonic() - killed
    print(f"\nleader killed: the follower served again after {took:.1f}s (a cold load)")
    _said(follower, "this gateway leads now")
    (moved,) = _get(follower, "/api/ps", admin)["models"]
    assert psutil.Process(int(moved["pid"])).is_running()

    leader.start()  # the old leader comes back: it follows
    pair.leader, pair.follower = follower, leader
    _said(leader, f"follows the gateway at {follower.url}")
    assert _chat(leader.url, admin).status_code == 200
    assert _get(leader, "/api/ps", admin)["models"][0]["pid"] == moved["pid"]
