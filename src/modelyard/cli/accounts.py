"""``modelyard keys | users | usage | login | backup | restore``: accounts from the terminal.

Everything but ``backup`` and ``restore`` goes through the server's API (with
``$MODELYARD_API_KEY`` or the session ``login`` saved); those two work on the database
itself, as the server's own configuration names it.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from modelyard.cli.client import (
    JsonOption,
    UrlOption,
    call,
    config_or_exit,
    console,
    err,
    relative,
    server_running,
    server_url,
    session_file,
)
from modelyard.config import database_url
from modelyard.quantity import parse_duration

keys = typer.Typer(help="Make, list, change and revoke API keys.", no_args_is_help=True)
users = typer.Typer(
    help="Add, list and remove users (for logins and shared limits).", no_args_is_help=True
)
out = console()

RoleOption = Annotated[str | None, typer.Option(help="admin, user or monitor.")]
ModelsOption = Annotated[
    str | None, typer.Option(help="Models it may use: names, aliases or globs, comma-separated.")
]
RpmOption = Annotated[int | None, typer.Option(help="Requests per minute.")]
TpmOption = Annotated[int | None, typer.Option(help="Tokens per minute.")]
ConcurrentOption = Annotated[int | None, typer.Option(help="Requests at once.")]
BalanceOption = Annotated[int | None, typer.Option(help="Token balance (unset: unlimited).")]


def _seconds(text: str) -> float:
    """``30d``, ``12h``, ``90m`` or seconds."""
    try:
        if text.endswith("d") and text[:-1].isdigit():
            return int(text[:-1]) * 86400.0
        seconds = parse_duration(text)
    except ValueError:
        seconds = None
    if seconds is None or seconds <= 0:
        err.print(f"[red]Not a duration:[/] {escape(text)} (such as 30d, 12h or 90m)")
        raise typer.Exit(2)
    return seconds


def _fields(**options: Any) -> dict[str, Any]:
    body = {k: v for k, v in options.items() if v is not None}
    if "models" in body:
        body["models"] = [m.strip() for m in body["models"].split(",") if m.strip()]
    return body


def _when(iso: str | None) -> str:
    return relative(iso) or "-"


def _limits(item: dict[str, Any]) -> str:
    labels = (("rpm", "rpm"), ("tpm", "tpm"), ("max_concurrent", "at once"))
    parts = [f"{item[k]} {label}" for k, label in labels if item.get(k)]
    return ", ".join(parts) or "-"


# ---- keys -----------------------------------------------------------------------------------


@keys.command("create")
def create_key(
    name: Annotated[str, typer.Argument(help="What the key is for (letters, digits, _.@-).")],
    role: RoleOption = None,
    user: Annotated[str | None, typer.Option(help="The user it belongs to.")] = None,
    models: ModelsOption = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    max_concurrent: ConcurrentOption = None,
    priority: Annotated[
        float | None, typer.Option(help="Its share in a busy queue (default 1).")
    ] = None,
    balance: BalanceOption = None,
    expires: Annotated[str | None, typer.Option(help="Valid for this long: 30d, 12h.")] = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make a key; it is printed now and never again."""
    body = _fields(
        name=name,
        role=role,
        user=user,
        models=models,
        rpm=rpm,
        tpm=tpm,
        max_concurrent=max_concurrent,
        priority=priority,
        balance=balance,
    )
    if expires:
        body["expires_in"] = _seconds(expires)
    made = call(server_url(url), "POST", "/api/keys", body)
    if as_json:
        out.print_json(json.dumps(made))
        return
    err.print(f"Key [bold]{escape(made['name'])}[/] ({made['role']}) made. It is shown only now:")
    print(made["key"])


@keys.command("ls")
def list_keys(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """List keys (admins: all of them; others: their own)."""
    found = call(server_url(url), "GET", "/api/keys")["keys"]
    if as_json:
        out.print_json(json.dumps(found))
        return
    table = Table(box=None, header_style="bold")
    for column in (
        "ID",
        "NAME",
        "USER",
        "ROLE",
        "MODELS",
        "LIMITS",
        "BALANCE",
        "EXPIRES",
        "STATUS",
    ):
        table.add_column(column, overflow="fold")
    for k in found:
        table.add_row(
            k["id"],
            k["name"],
            k["user"] or "-",
            k["role"],
            ",".join(k["models"]) or "all",
            _limits(k),
            "-" if k["balance"] is None else str(k["balance"]),
            _when(k["expires_at"]),
            "enabled" if k["enabled"] else "revoked",
        )
    out.print(table)


@keys.command("revoke")
def revoke_key(
    key: Annotated[str, typer.Argument(help="The key's id or name.")], url: UrlOption = None
) -> None:
    """Revoke a key: it stops working within a second."""
    revoked = call(server_url(url), "DELETE", f"/api/keys/{key}")
    err.print(f"Revoked key {escape(revoked['id'])} ({escape(revoked['name'])})")


@keys.command("set")
def set_key(
    key: Annotated[str, typer.Argument(help="The key's id or name.")],
    name: Annotated[str | None, typer.Option(help="A new name.")] = None,
    role: RoleOption = None,
    models: ModelsOption = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    max_concurrent: ConcurrentOption = None,
    priority: Annotated[float | None, typer.Option(help="Its share in a busy queue.")] = None,
    balance: BalanceOption = None,
    add_balance: Annotated[
        int | None, typer.Option(help="Add to (or, negative, take from) the balance.")
    ] = None,
    expires: Annotated[str | None, typer.Option(help="Valid for this long from now.")] = None,
    enable: Annotated[
        bool | None, typer.Option("--enable/--disable", help="Turn it on or off.")
    ] = None,
    clear: Annotated[
        list[str] | None,
        typer.Option(help="Remove a limit: models, rpm, tpm, max_concurrent, balance, expires."),
    ] = None,
    url: UrlOption = None,
) -> None:
    """Change a key's limits, models, balance or expiry."""
    body = _fields(
        name=name,
        role=role,
        models=models,
        rpm=rpm,
        tpm=tpm,
        max_concurrent=max_concurrent,
        priority=priority,
        balance=balance,
        add_balance=add_balance,
        enabled=enable,
        clear=clear,
    )
    if expires:
        body["expires_in"] = _seconds(expires)
    changed = call(server_url(url), "PATCH", f"/api/keys/{key}", body)
    out.print_json(json.dumps(changed))


# ---- users ----------------------------------------------------------------------------------


def _new_password(prompt: str) -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(prompt)
    if getpass.getpass("Again: ") != first:
        err.print("[red]The passwords differ.[/]")
        raise typer.Exit(2)
    return first


@users.command("add")
def add_user(
    name: str,
    role: Annotated[str, typer.Option(help="admin, user or monitor.")] = "user",
    password: Annotated[
        bool, typer.Option("--password/--no-password", help="Ask for a password (for login).")
    ] = True,
    models: ModelsOption = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    max_concurrent: ConcurrentOption = None,
    balance: BalanceOption = None,
    url: UrlOption = None,
) -> None:
    """Add a user (the password is read from the terminal, or a line of standard input)."""
    body = _fields(
        name=name,
        role=role,
        models=models,
        rpm=rpm,
        tpm=tpm,
        max_concurrent=max_concurrent,
        balance=balance,
    )
    if password:
        body["password"] = _new_password(f"Password for {name}: ")
    call(server_url(url), "POST", "/api/users", body)
    err.print(f"Added user {escape(name)} ({role})")


@users.command("ls")
def list_users(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """List users."""
    found = call(server_url(url), "GET", "/api/users")["users"]
    if as_json:
        out.print_json(json.dumps(found))
        return
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "ROLE", "MODELS", "LIMITS", "BALANCE", "STATUS"):
        table.add_column(column, overflow="fold")
    for u in found:
        table.add_row(
            u["name"],
            u["role"],
            ",".join(u["models"]) or "all",
            _limits(u),
            "-" if u["balance"] is None else str(u["balance"]),
            "enabled" if u["enabled"] else "disabled",
        )
    out.print(table)


@users.command("passwd")
def passwd(name: str, url: UrlOption = None) -> None:
    """Set a user's password."""
    password = _new_password(f"New password for {name}: ")
    call(server_url(url), "PATCH", f"/api/users/{name}", {"password": password})
    err.print(f"Password of {escape(name)} changed")


@users.command("set")
def set_user(
    name: str,
    role: RoleOption = None,
    models: ModelsOption = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    max_concurrent: ConcurrentOption = None,
    balance: BalanceOption = None,
    add_balance: Annotated[int | None, typer.Option(help="Add to the balance.")] = None,
    enable: Annotated[bool | None, typer.Option("--enable/--disable")] = None,
    clear: Annotated[
        list[str] | None, typer.Option(help="Remove: models, rpm, tpm, max_concurrent, balance.")
    ] = None,
    url: UrlOption = None,
) -> None:
    """Change a user's role, models, limits or balance."""
    body = _fields(
        role=role,
        models=models,
        rpm=rpm,
        tpm=tpm,
        max_concurrent=max_concurrent,
        balance=balance,
        add_balance=add_balance,
        enabled=enable,
        clear=clear,
    )
    out.print_json(json.dumps(call(server_url(url), "PATCH", f"/api/users/{name}", body)))


@users.command("rm")
def remove_user(name: str, url: UrlOption = None) -> None:
    """Remove a user and its keys (the usage ledger keeps their rows)."""
    call(server_url(url), "DELETE", f"/api/users/{name}")
    err.print(f"Removed user {escape(name)} and its keys")


# ---- usage, login ---------------------------------------------------------------------------


def usage(
    key: Annotated[str | None, typer.Option(help="A key's id or name.")] = None,
    user: Annotated[str | None, typer.Option(help="A user.")] = None,
    model: Annotated[str | None, typer.Option(help="A model.")] = None,
    since: Annotated[str | None, typer.Option(help="From: ISO time, or this long ago.")] = None,
    until: Annotated[str | None, typer.Option(help="Until: ISO time, or this long ago.")] = None,
    by: Annotated[str | None, typer.Option(help="Totals per key, user, model or day.")] = None,
    limit: Annotated[int, typer.Option(help="Most rows (without --by).")] = 100,
    as_json: JsonOption = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
    url: UrlOption = None,
) -> None:
    """Print the usage ledger: requests and tokens, or totals --by key, user, model or day."""
    params = {
        k: v
        for k, v in {
            "key": key,
            "user": user,
            "model": model,
            "since": since,
            "until": until,
            "by": by,
        }.items()
        if v is not None
    }
    params["limit"] = str(limit)
    base = server_url(url)
    if as_csv:
        csv = {**params, "format": "csv"}
        sys.stdout.write(call(base, "GET", "/api/usage", params=csv, timeout=120, text=True))
        return
    data = call(base, "GET", "/api/usage", params=params, timeout=120)
    if as_json:
        out.print_json(json.dumps(data["rows"]))
        return
    rows = data["rows"]
    table = Table(box=None, header_style="bold")
    if by:
        columns = [by, "requests", "prompt_tokens", "completion_tokens", "cost", "errors"]
    else:
        columns = [
            "time",
            "key_name",
            "username",
            "model",
            "status",
            "prompt_tokens",
            "completion_tokens",
            "cost",
            "total_ms",
        ]
    for column in columns:
        table.add_column(column.upper().replace("_TOKENS", "").replace("_", " "), overflow="fold")
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column)
            if column == "time" and value is not None:
                value = datetime.fromtimestamp(value).isoformat(sep=" ", timespec="seconds")
            cells.append("-" if value is None else str(value))
        table.add_row(*cells)
    out.print(table)


def login(
    username: Annotated[str, typer.Argument(help="Your user name.")],
    url: UrlOption = None,
) -> None:
    """Log in with a password: later commands to this server send the session."""
    base = server_url(url)
    password = getpass.getpass("Password: ") if sys.stdin.isatty() else sys.stdin.readline()
    answer = call(
        base, "POST", "/api/login", {"username": username, "password": password.rstrip("\n")}
    )
    path = session_file()
    try:
        sessions = json.loads(path.read_text())
    except (OSError, ValueError):
        sessions = {}
    sessions[base] = answer["token"]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(sessions, f)
    err.print(
        f"Logged in to {base} as {escape(username)} ({answer['role']}) until {answer['expires_at']}"
    )


# ---- backup and restore ---------------------------------------------------------------------


def backup(file: Annotated[Path, typer.Argument(help="Where to write the copy.")]) -> None:
    """Copy the accounts database (keys, users, usage), consistently, while the server runs."""
    from sqlalchemy.engine import make_url  # sqlalchemy: only here (fast CLI start)

    url = make_url(database_url(config_or_exit()))
    if url.get_backend_name() == "sqlite":
        source = Path(url.database or "")
        if not source.is_file():
            err.print(f"[red]No database at {source}[/] (has the server run yet?)")
            raise typer.Exit(1)
        # SQLite's online backup: a consistent copy even while the server writes.
        with sqlite3.connect(source) as src, sqlite3.connect(file) as dst:
            src.backup(dst)
        err.print(f"Wrote {file} (SQLite, from {source})")
        return
    _pg_tool("pg_dump", ["--format=custom", f"--file={file}", _libpq(url)])
    err.print(f"Wrote {file} (pg_dump custom format)")


def restore(
    file: Annotated[Path, typer.Argument(help="A copy made by `modelyard backup`.")],
    url: UrlOption = None,
) -> None:
    """Replace the accounts database with a backup (stop the server first)."""
    if not file.is_file():
        err.print(f"[red]No file {file}[/]")
        raise typer.Exit(1)
    if server_running(server_url(url)):
        err.print("[red]A server is running:[/] stop it first, then restore, then start it.")
        raise typer.Exit(1)
    from sqlalchemy.engine import make_url

    target = make_url(database_url(config_or_exit()))
    if target.get_backend_name() == "sqlite":
        path = Path(target.database or "")
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(file) as src:
            src.execute("PRAGMA quick_check")
            with sqlite3.connect(path) as dst:
                src.backup(dst)
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        err.print(f"Restored {path} from {file}")
        return
    _pg_tool(
        "pg_restore",
        ["--clean", "--if-exists", "--no-owner", f"--dbname={_libpq(target)}", str(file)],
    )
    err.print(f"Restored the database from {file}")


def _libpq(url: Any) -> str:
    """The URL as libpq's tools take it (no ``+asyncpg``)."""
    return str(url.set(drivername="postgresql").render_as_string(hide_password=False))


def _pg_tool(name: str, args: list[str]) -> None:
    program = shutil.which(name)
    if program is None:
        err.print(f"[red]{name} is not installed[/] (Debian: apt-get install postgresql-client)")
        raise typer.Exit(1)
    result = subprocess.run([program, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        err.print(f"[red]{name} failed:[/] {escape(result.stderr.strip())}")
        raise typer.Exit(1)
