"""Accounts in a real ``modelyard serve``: the first admin key, the CLI, backup and restore,
and what the usage ledger keeps when the gateway is killed or stopped."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from modelyard.accounts.identity import Role
from tests.fake import responder_binary
from tests.integration.conftest import Server

CHAT = {"model": "canned", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def config(tmp: Path) -> str:
    (tmp / "canned.gguf").write_bytes(b"GGUF")
    return (
        f'[models.canned]\npath = "{tmp / "canned.gguf"}"\n'
        f'llama_server = "{responder_binary(tmp)}"\n'
        'memory = "16MiB"\nparallel = 4\nmax_queue = 64\nkeep_alive = -1\n'
    )


def admin_key(server: Server) -> str:
    printed = [
        line.strip()
        for line in server.log.read_text().splitlines()
        if line.strip().startswith("my-")
    ]
    assert len(printed) == 1, server.log.read_text()
    return printed[0]


def cli(
    server: Server, *args: str, key: str | None = None, stdin: str = "", home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env.update(
        MODELYARD_URL=server.url,
        MODELYARD_HOME=str(home or server.home),
        MODELYARD_CONFIG=str(server.home.parent / "modelyard.toml"),
        COLUMNS="200",
    )
    if key:
        env["MODELYARD_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "modelyard", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.slow
def test_accounts_first_admin_key_cli_backup_and_restore(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    server = server_factory(config(tmp_path), env={"MODELYARD_AUTH": "keys"})
    admin = admin_key(server)
    gateway_log = (server.home / "logs" / "gateway.log").read_text()
    assert admin not in gateway_log  # printed to the terminal once, never logged
    assert httpx.get(f"{server.url}/v1/models").status_code == 401

    made = cli(server, "keys", "create", "ci-bot", "--rpm", "100", "--balance", "1000", key=admin)
    assert made.returncode == 0, made.stderr
    bot = made.stdout.strip()
    assert bot.startswith("my-")
    assert "shown only now" in made.stderr
    answer = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, headers=bearer(bot))
    assert answer.status_code == 200
    assert answer.headers["x-ratelimit-limit-requests"] == "100"

    listed = cli(server, "keys", "ls", key=admin)
    assert "ci-bot" in listed.stdout
    assert bot not in listed.stdout  # only ever shown at creation
    no_key = cli(server, "keys", "ls")
    assert no_key.returncode == 1
    assert "MODELYARD_API_KEY" in no_key.stderr

    added = cli(server, "users", "add", "gina", key=admin, stdin="gina-password\n")
    assert added.returncode == 0, added.stderr
    assert "gina" in cli(server, "users", "ls", key=admin).stdout
    elsewhere = server.home.parent / "cli-home"  # a user's own machine: its own session file
    login = cli(server, "login", "gina", stdin="gina-password\n", home=elsewhere)
    assert login.returncode == 0, login.stderr
    assert "Logged in" in login.stderr
    mine = cli(server, "keys", "create", "gina-laptop", home=elsewhere)  # with the session
    assert mine.returncode == 0, mine.stderr
    sessions = elsewhere / "cli-sessions.json"
    assert oct(sessions.stat().st_mode & 0o777) == "0o600"

    usage = cli(server, "usage", "--by", "key", "--csv", key=admin)
    assert usage.returncode == 0, usage.stderr
    assert (
        usage.stdout.splitlines()[0] == "key,requests,prompt_tokens,completion_tokens,cost,errors"
    )
    assert "ci-bot,1,5,7,12,0" in usage.stdout

    revoked = cli(server, "keys", "revoke", "ci-bot", key=admin)
    assert revoked.returncode == 0, revoked.stderr
    after = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, headers=bearer(bot))
    assert after.status_code == 401

    copy = tmp_path / "backup.db"
    backup = cli(server, "backup", str(copy))  # while it runs
    assert backup.returncode == 0, backup.stderr
    with sqlite3.connect(copy) as db:
        assert db.execute("select count(*) from keys").fetchone()[0] == 3
    refused = cli(server, "restore", str(copy))
    assert refused.returncode == 1
    assert "stop it first" in refused.stderr

    # A change after the backup, then restore: it is gone again.
    cli(server, "keys", "create", "after-backup", key=admin)
    server.stop()
    restored = cli(server, "restore", str(copy))
    assert restored.returncode == 0, restored.stderr
    with sqlite3.connect(server.home / "modelyard.db") as db:
        names = {row[0] for row in db.execute("select name from keys")}
    assert names == {"admin", "ci-bot", "gina-laptop"}


def _load(server: Server, key: str, stop: threading.Event, served: list[float]) -> None:
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            try:
                answer = client.post(
                    f"{server.url}/v1/chat/completions", json=CHAT, headers=bearer(key)
                )
            except httpx.HTTPError:
                return
            if answer.status_code == 200:
                served.append(time.monotonic())


def _ledger(server: Server) -> list[tuple[object, ...]]:
    with sqlite3.connect(server.home / "modelyard.db") as db:
        return db.execute(
            "select request_id, key_name, model, status, prompt_tokens, "
            "completion_tokens, cost, total_ms from usage"
        ).fetchall()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_accounts_ledger_after_the_gateway_is_killed_or_stopped(
    server_factory: Callable[..., Server], tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGKILL under load loses at most the rows of the last flush (README: 200 ms), never
    part of a row; SIGTERM loses none."""
    server = server_factory(config(tmp_path), env={"MODELYARD_AUTH": "keys"})
    admin = admin_key(server)
    key = httpx.post(
        f"{server.url}/api/keys", json={"name": "load", "balance": 10**9}, headers=bearer(admin)
    ).json()["key"]
    stop = threading.Event()
    served: list[float] = []
    threads = [threading.Thread(target=_load, args=(server, key, stop, served)) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    server.process.send_signal(sig)
    killed_at = time.monotonic()
    server.process.wait(30)
    stop.set()
    for thread in threads:
        thread.join(15)
    rows = _ledger(server)
    assert len(served) > 50
    assert all(None not in row[:7] for row in rows)  # whole rows only
    assert all(row[1] == "load" and row[3] == 200 and row[6] == 12 for row in rows)
    assert len({row[0] for row in rows}) == len(rows)
    if sig == signal.SIGTERM:
        assert len(rows) == len(served)
    else:
        # Every request that ended more than the flush interval (and a batch's write)
        # before the kill is in the ledger.
        settled = [t for t in served if t < killed_at - 0.5]
        assert len(rows) >= len(settled)
        assert len(rows) <= len(served) + len(threads)  # answered, not yet read when killed


async def test_accounts_backup_and_restore_on_postgresql(postgres: object, tmp_path: Path) -> None:
    from modelyard.accounts.service import Accounts
    from modelyard.accounts.store import Store
    from modelyard.runners.process import free_port

    url: str = await postgres.new_database()  # type: ignore[attr-defined]
    accounts = Accounts(await Store.open(url), required=True, ledger=False)
    await accounts.start()
    await accounts.create_key(name="kept", role=Role.USER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env.update(
        MODELYARD_DATABASE_URL=url,
        MODELYARD_HOME=str(tmp_path),
        MODELYARD_URL=f"http://127.0.0.1:{free_port()}",
    )  # no server there

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "modelyard", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    dump = tmp_path / "accounts.dump"
    made = run("backup", str(dump))
    assert made.returncode == 0, made.stderr
    await accounts.create_key(name="after-backup", role=Role.USER)
    await accounts.close()
    restored = run("restore", str(dump))
    assert restored.returncode == 0, restored.stderr
    store = await Store.open(url)
    try:
        assert [k["name"] for k in await store.keys()] == ["kept"]
    finally:
        await store.close()
