"""The accounts database: keys, users, the usage ledger and server secrets (SQLAlchemy Core).

Times are Unix seconds (``float``); balances and charges are whole tokens (after a model's
``price``), so that sums add up exactly. The schema is created and changed only by the
Alembic migrations in ``migrations/``; this module describes it for queries.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("password_hash", Text, nullable=True),
    Column("role", String(16), nullable=False),
    Column("models", Text, nullable=True),
    Column("rpm", Integer, nullable=True),
    Column("tpm", Integer, nullable=True),
    Column("max_concurrent", Integer, nullable=True),
    Column("balance", BigInteger, nullable=True),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("created_at", Float, nullable=False),
)

keys = Table(
    "keys",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("hash", String(64), nullable=False),
    Column("name", String(64), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
    Column("role", String(16), nullable=False),
    Column("models", Text, nullable=True),
    Column("rpm", Integer, nullable=True),
    Column("tpm", Integer, nullable=True),
    Column("max_concurrent", Integer, nullable=True),
    Column("priority", Float, nullable=False, default=1.0),
    Column("balance", BigInteger, nullable=True),
    Column("expires_at", Float, nullable=True),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("created_at", Float, nullable=False),
)

usage = Table(
    "usage",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("time", Float, nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("key_id", String(16), nullable=True),
    Column("key_name", String(64), nullable=True),
    Column("username", String(64), nullable=True),
    Column("model", String(512), nullable=True),
    Column("route", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("cost", BigInteger, nullable=False),
    Column("queue_ms", Float, nullable=True),
    Column("load_ms", Float, nullable=True),
    Column("ttft_ms", Float, nullable=True),
    Column("total_ms", Float, nullable=False),
    Column("cancelled", Boolean, nullable=False),
    Index("usage_time", "time"),
    Index("usage_key_time", "key_id", "time"),
)

secrets = Table(
    "secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
