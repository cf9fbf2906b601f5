"""Which of several gateways leads: the one holding a PostgreSQL advisory lock.

Every gateway of a cluster shares the accounts' PostgreSQL database. Each holds a connection
of its own to it, named (``application_name``) by the URL the other gateways reach it at,
and tries ``pg_try_advisory_lock`` on it: the one that holds the lock owns the scheduler
(it leads); the others find its URL by asking PostgreSQL who holds the lock (``pg_locks``
and ``pg_stat_activity``), so nothing is ever written that could go stale. A leader that
dies, or whose connection breaks, loses the lock with its session; the next gateway to try
takes it.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
from sqlalchemy.engine import make_url

from modelyard.config import Config
from modelyard.errors import ConfigError

LOCK = 0x6D79_6172
"""The advisory lock's key (``pg_locks`` shows a key below 2**32 as ``objid``)."""
NAME_MAX = 63
"""The longest ``application_name`` PostgreSQL keeps."""
_TIMEOUT = 5.0
"""Seconds a query of the election may take."""
_KEEPALIVES = {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2",
               "tcp_keepalives_count": "3"}  # fmt: skip
"""PostgreSQL's side of a connection whose gateway's machine or network died ends (and the
lock with it) within about 11 s, not the system's default of two hours and more."""

_WILDCARD = ("0.0.0.0", "::", "")

_HOLDER = """
SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = $1
  AND l.objsubid = 1 AND l.database = (SELECT oid FROM pg_database
                                       WHERE datname = current_database())
"""


def advertised(config: Config) -> str:
    """The URL the other gateways reach this one at."""
    if config.advertise:
        return config.advertise.rstrip("/")
    if config.host in _WILDCARD:
        raise ConfigError(
            f"--gateways: this gateway listens on {config.host or 'every address'}; say the "
            "URL the other gateways reach it at with --advertise http://ADDRESS:PORT"
        )
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"http://{host}:{config.port}"


def dsn_of(url: str) -> str:
    """The ``postgresql://`` address asyncpg takes, from SQLAlchemy's ``database_url``."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError(
            "several gateways share the accounts in PostgreSQL: set database_url to a "
            f"postgresql+asyncpg:// URL (it is {parsed.get_backend_name()})"
        )
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


class Election:
    """This gateway's seat in the election (see the module)."""

    def __init__(self, dsn: str, url: str) -> None:
        if len(url) > NAME_MAX:
            raise ConfigError(f"advertise: {url!r} is longer than {NAME_MAX} characters")
        self._dsn = dsn
        self.url = url
        """Where the other gateways reach this one."""
        self._conn: asyncpg.Connection | None = None
        self.leading = False

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(
                self._dsn,
                timeout=_TIMEOUT,
                server_settings={"application_name": self.url, **_KEEPALIVES},
            )
        return self._conn

    async def try_lead(self) -> bool:
        """Takes the lead if nobody holds it; whether this gateway leads now."""
        conn = await self._connection()
        self.leading = bool(
            await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK, timeout=_TIMEOUT)
        )
        return self.leading

    async def leader(self) -> str | None:
        """The URL of the gateway that leads, if one does."""
        conn = await self._connection()
        found = await conn.fetchval(_HOLDER, LOCK, timeout=_TIMEOUT)
        return str(found) if found else None

    async def still_leading(self) -> bool:
        """Whether the lead is still this gateway's: its session (and so its lock) is alive."""
        if not self.leading or self._conn is None or self._conn.is_closed():
            return False
        try:
            await self._conn.fetchval("SELECT 1", timeout=_TIMEOUT)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
        return True

    async def close(self) -> None:
        """Leaves the election (a leader hands the lead on)."""
        self.leading = False
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.close(), _TIMEOUT)
            self._conn = None
