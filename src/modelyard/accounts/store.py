"""The accounts database through SQLAlchemy's asyncio engine: SQLite (WAL) by default, or
PostgreSQL (``postgresql+asyncpg://…``) where several gateways share it.

``Store.open`` applies the Alembic migrations before anything else. Balances change only by
conditional ``UPDATE``s (``balance >= n``), so that no interleaving of requests, in one
gateway or several, takes one below zero.
"""

from __future__ import annotations

import json
import logging
import secrets as random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Select, and_, case, event, func, insert, select, update
from sqlalchemy import delete as sql_delete
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from modelyard.accounts import tables
from modelyard.errors import ConfigError, ConflictError, NotFoundError

log = logging.getLogger(__name__)

GROUPS = ("key", "user", "model", "day")
USAGE_COLUMNS = (
    "time",
    "request_id",
    "key_id",
    "key_name",
    "username",
    "model",
    "route",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    "queue_ms",
    "load_ms",
    "ttft_ms",
    "total_ms",
    "cancelled",
)
SCHEMA = "0001"
"""The newest migration: a database already there is opened without loading Alembic (a
third of a second at every start)."""


@dataclass(frozen=True)
class UsageRow:
    """One request in the ledger (``tables.usage``), and the balance it gives back."""

    time: float
    request_id: str
    key_id: str | None
    key_name: str | None
    username: str | None
    user_id: int | None
    model: str | None
    route: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    cost: int
    queue_ms: float | None
    load_ms: float | None
    ttft_ms: float | None
    total_ms: float
    cancelled: bool

    def params(self) -> tuple[Any, ...]:
        """``values()`` in the order of ``USAGE_COLUMNS``."""
        return (
            self.time,
            self.request_id,
            self.key_id,
            self.key_name,
            self.username,
            self.model,
            self.route,
            self.status,
            self.prompt_tokens,
            self.completion_tokens,
            self.cost,
            self.queue_ms,
            self.load_ms,
            self.ttft_ms,
            self.total_ms,
            self.cancelled,
        )


@dataclass(frozen=True)
class UsageQuery:
    key: str | None = None
    """A key's id or name."""
    user: str | None = None
    model: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 1000


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        marks = {"qmark": "?", "format": "%s", "numeric_dollar": "${}", "numeric": ":{}"}
        mark = marks[engine.dialect.paramstyle]
        places = ", ".join(mark.format(n + 1) for n in range(len(USAGE_COLUMNS)))
        self._insert_usage = f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)}) VALUES ({places})"

    @classmethod
    async def open(cls, url: str) -> Store:
        """Connects to ``url`` and brings its schema up to date."""
        try:
            parsed = make_url(url)
        except Exception as exc:
            raise ConfigError(f"database_url: not a database URL: {exc}") from None
        options: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            if parsed.database:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        else:
            options["pool_size"] = 8
            options["pool_pre_ping"] = True
        engine = create_async_engine(parsed, **options)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        store = cls(engine)
        try:
            async with engine.begin() as conn:
                if await conn.run_sync(_version) != SCHEMA:
                    await conn.run_sync(_migrate)
        except Exception:
            await engine.dispose()
            raise
        return store

    async def close(self) -> None:
        await self.engine.dispose()

    # ---- secrets ----------------------------------------------------------------------------

    async def secret(self, name: str) -> str:
        """A random secret kept in the database (the session-signing key), made once."""
        async with self.engine.begin() as conn:
            value = await conn.scalar(
                select(tables.secrets.c.value).where(tables.secrets.c.name == name)
            )
            if value is not None:
                return str(value)
        value = random.token_urlsafe(48)
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(tables.secrets).values(name=name, value=value))
        except IntegrityError:  # another gateway made it first
            async with self.engine.begin() as conn:
                value = await conn.scalar(
                    select(tables.secrets.c.value).where(tables.secrets.c.name == name)
                )
        return str(value)

    # ---- keys -------------------------------------------------------------------------------

    async def add_key(self, values: Mapping[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(tables.keys).values(created_at=time.time(), **_encoded(values))
            )

    async def key(self, key_id: str) -> dict[str, Any] | None:
        """A key with its user's fields (``user_*``), or ``None``."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(_keys_query().where(tables.keys.c.id == key_id))).first()
        return _decoded(row._asdict()) if row is not None else None

    async def find_key(self, ref: str) -> dict[str, Any]:
        """A key by id or name (``NotFoundError`` when none, ``ConflictError`` when the name
        is not unique)."""
        ref = ref.removeprefix("my-").removesuffix("…")
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    _keys_query().where((tables.keys.c.id == ref) | (tables.keys.c.name == ref))
                )
            ).all()
        exact = [r for r in rows if r.id == ref] or rows
        if not exact:
            raise NotFoundError(f"No key {ref!r} (give its id, as `modelyard keys ls` shows)")
        if len(exact) > 1:
            raise ConflictError(f"{len(exact)} keys are named {ref!r}: give the key's id")
        return _decoded(exact[0]._asdict())

    async def keys(self, user_id: int | None = None) -> list[dict[str, Any]]:
        query = _keys_query().order_by(tables.keys.c.created_at)
        if user_id is not None:
            query = query.where(tables.keys.c.user_id == user_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_decoded(r._asdict()) for r in rows]

    async def update_key(self, key_id: str, values: Mapping[str, Any]) -> None:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(tables.keys).where(tables.keys.c.id == key_id).values(**_encoded(values))
            )
        if result.rowcount == 0:
            raise NotFoundError(f"No key {key_id!r}")

    async def count_keys(self) -> int:
        async with self.engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(tables.keys)) or 0)

    # ---- users ------------------------------------------------------------------------------

    async def add_user(self, name: str, values: Mapping[str, Any]) -> int:
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(
                    insert(tables.users)
                    .values(name=name, created_at=time.time(), **_encoded(values))
                    .returning(tables.users.c.id)
                )
                return int(result.scalar_one())
        except IntegrityError:
            raise ConflictError(f"A user named {name!r} exists already") from None

    async def user(self, name: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(tables.users).where(tables.users.c.name == name))
            ).first()
        if row is None:
            raise NotFoundError(f"No user {name!r}")
        return _decoded(row._asdict())

    async def user_by_id(self, user_id: int) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(tables.users).where(tables.users.c.id == user_id))
            ).first()
        return _decoded(row._asdict()) if row is not None else None

    async def users(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(tables.users).order_by(tables.users.c.id))).all()
        return [_decoded(r._asdict()) for r in rows]

    async def update_user(self, name: str, values: Mapping[str, Any]) -> None:
        if not values:
            await self.user(name)  # that it exists
            return
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(tables.users).where(tables.users.c.name == name).values(**_encoded(values))
            )
        if result.rowcount == 0:
            raise NotFoundError(f"No user {name!r}")

    async def remove_user(self, name: str) -> None:
        """Removes the user and its keys (their usage rows stay, with the names)."""
        user = await self.user(name)
        async with self.engine.begin() as conn:
            await conn.execute(sql_delete(tables.keys).where(tables.keys.c.user_id == user["id"]))
            await conn.execute(sql_delete(tables.users).where(tables.users.c.id == user["id"]))

    async def add_balance(self, kind: str, ident: object, amount: int) -> None:
        """Adds ``amount`` (or takes it, when negative) in one statement; never below zero."""
        table = tables.keys if kind == "key" else tables.users
        balance = func.coalesce(table.c.balance, 0)
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(table)
                .where(table.c.id == ident, balance + amount >= 0)
                .values(balance=balance + amount)
            )
        if result.rowcount == 0:
            raise ConflictError(f"The balance would go below zero (it has less than {-amount})")

    # ---- balances and the ledger ------------------------------------------------------------

    async def take(self, wallet: tuple[str, object], want: int, need: int) -> int | None:
        """Takes ``want`` tokens from a key's or user's balance, else ``need``, else nothing
        (0); ``None`` when it has no balance (unlimited)."""
        kind, ident = wallet
        table = tables.keys if kind == "key" else tables.users
        async with self.engine.begin() as conn:
            for amount in dict.fromkeys((want, need)):
                result = await conn.execute(
                    update(table)
                    .where(table.c.id == ident, table.c.balance >= amount)
                    .values(balance=table.c.balance - amount)
                )
                if result.rowcount:
                    return amount
            balance = await conn.scalar(select(table.c.balance).where(table.c.id == ident))
        return None if balance is None else 0

    async def write(
        self, rows: Sequence[UsageRow], returns: Mapping[tuple[str, object], int] | None = None
    ) -> None:
        """Adds ``rows`` to the ledger and ``returns`` (credit a gateway held) back to their
        balances, in one transaction: after a crash either all of a batch is there or none."""
        if not rows and not returns:
            return
        async with self.engine.begin() as conn:
            if rows:
                # Straight to the driver: SQLAlchemy's handling of each row's parameters took
                # three quarters of the event loop's time per row.
                await conn.exec_driver_sql(self._insert_usage, [row.params() for row in rows])
            for (kind, ident), amount in sorted((returns or {}).items(), key=str):
                table = tables.keys if kind == "key" else tables.users
                await conn.execute(
                    update(table)
                    .where(table.c.id == ident, table.c.balance.is_not(None))
                    .values(balance=table.c.balance + amount)
                )

    async def usage(self, query: UsageQuery) -> list[dict[str, Any]]:
        u = tables.usage
        select_rows = select(u).where(*_usage_filters(query)).order_by(u.c.id.desc())
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select_rows.limit(query.limit))).all()
        return [r._asdict() for r in rows]

    async def usage_by(self, query: UsageQuery, group: str) -> list[dict[str, Any]]:
        """Totals per key, user, model or day (UTC)."""
        u = tables.usage
        column: Any = {
            "key": u.c.key_name,
            "user": u.c.username,
            "model": u.c.model,
            "day": self._day(u.c.time),
        }[group]
        totals: Select[Any] = (
            select(
                column.label(group),
                func.count().label("requests"),
                func.sum(u.c.prompt_tokens).label("prompt_tokens"),
                func.sum(u.c.completion_tokens).label("completion_tokens"),
                func.sum(u.c.cost).label("cost"),
                func.sum(case((u.c.status >= 400, 1), else_=0)).label("errors"),
            )
            .where(*_usage_filters(query))
            .group_by(column)
            .order_by(column)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(totals)).all()
        return [
            {k: (int(v) if k != group and v is not None else v) for k, v in r._asdict().items()}
            for r in rows
        ]

    def _day(self, column: Any) -> Any:
        if self.dialect == "sqlite":
            return func.date(column, "unixepoch")
        return func.to_char(func.timezone("UTC", func.to_timestamp(column)), "YYYY-MM-DD")


def _keys_query() -> Select[Any]:
    k, u = tables.keys, tables.users
    return select(
        k,
        u.c.name.label("user_name"),
        u.c.role.label("user_role"),
        u.c.models.label("user_models"),
        u.c.rpm.label("user_rpm"),
        u.c.tpm.label("user_tpm"),
        u.c.max_concurrent.label("user_max_concurrent"),
        u.c.balance.label("user_balance"),
        u.c.enabled.label("user_enabled"),
    ).select_from(k.outerjoin(u, k.c.user_id == u.c.id))


def _usage_filters(query: UsageQuery) -> list[Any]:
    u = tables.usage
    filters: list[Any] = []
    if query.key is not None:
        filters.append((u.c.key_id == query.key) | (u.c.key_name == query.key))
    if query.user is not None:
        filters.append(u.c.username == query.user)
    if query.model is not None:
        filters.append(u.c.model == query.model)
    if query.since is not None:
        filters.append(u.c.time >= query.since)
    if query.until is not None:
        filters.append(u.c.time < query.until)
    return [and_(*filters)] if filters else []


def _encoded(values: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(values)
    for name in ("models", "user_models"):
        if name in out and out[name] is not None:
            out[name] = json.dumps(list(out[name]))
    return out


def _decoded(values: dict[str, Any]) -> dict[str, Any]:
    for name in ("models", "user_models"):
        raw = values.get(name)
        values[name] = json.loads(raw) if raw else []
    return values


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers never wait for the writer; NORMAL: a committed batch survives a killed
    # process (the WAL is in the OS's hands), only a power cut may lose the last ones.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _version(connection: Connection) -> str | None:
    from sqlalchemy import inspect, text

    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _migrate(connection: Connection) -> None:
    # Quiet before the import: importing alembic logs its plugin list, at every start.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from alembic import command
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
