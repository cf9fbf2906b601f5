"""Settings from the environment (``MODELYARD_*``) and ``modelyard.toml``; the only env reader.

``load_config`` turns both into a ``Config``: server and memory settings plus the resolved
``ModelSpec`` list (explicit entries, discovered files, or the demo models when there is no
config file at all; ``modelyard.catalog.build`` and ``modelyard.catalog.demo`` make it). Any
invalid value raises ``ConfigError`` naming the file, the table and the key, and the server
does not start.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelyard.catalog.build import check_names, entry_spec, merge, resolve
from modelyard.catalog.demo import demo_models
from modelyard.catalog.discovery import discover
from modelyard.catalog.entry import Duration, ModelEntry, Seconds, Size
from modelyard.catalog.spec import DEFAULT_KEEP_ALIVE, ModelSpec, default
from modelyard.errors import ConfigError
from modelyard.quantity import parse_size

log = logging.getLogger(__name__)

DEFAULT_PORT = 8000


class Settings(BaseSettings):
    """Environment variables; each overrides the matching ``modelyard.toml`` value."""

    model_config = SettingsConfigDict(env_prefix="MODELYARD_", extra="ignore")

    home: Path | None = None
    config: Path | None = None
    host: str | None = None
    port: int | None = None
    models_dir: Path | None = None
    ram_budget: str | None = None
    gpu_budget: str | None = None
    url: str | None = None
    """Where the CLI finds the server (``http://127.0.0.1:8000`` by default)."""
    log_format: Literal["text", "json"] | None = None
    demo: bool | None = None
    """``false`` (``--no-demo``): no demo models, whatever the file says."""
    database_url: str | None = None
    auth: Literal["auto", "off", "keys"] | None = None
    api_key: str | None = None
    """The key the CLI sends (``Authorization: Bearer``)."""
    cluster: str | None = None
    """The address of a Ray cluster's head (``IP:PORT``) whose nodes serve models too."""
    cluster_ip: str | None = None
    """This machine's address in the cluster (where ``cluster``'s head runs)."""
    gateways: bool | None = None
    """One of several gateways sharing the accounts' PostgreSQL database."""
    advertise: str | None = None
    """The URL the other gateways reach this one at."""

    def data_home(self) -> Path:
        if self.home is not None:
            return self.home.expanduser()
        xdg = os.environ.get("XDG_DATA_HOME")
        base = Path(xdg) if xdg else Path.home() / ".local" / "share"
        return base / "modelyard"


def _budget(value: str | int) -> str | int:
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ValueError("expected bytes, a size like '16GiB', or a share like '80%'")
    parse_size(value, total=1)
    return value


class _ServerTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    models_dir: str | None = None
    llama_server: str | None = None
    kv_cache_disk: Size = default("kv_cache_disk")
    """Disk the saved KV states of llama.cpp models may take together (warm swaps: a model
    unloaded and loaded again picks its conversations up where they were); 0: off."""
    demo: bool = True
    """Serve the demo models (when their packages are installed) besides this file's."""
    keep_alive: Duration = DEFAULT_KEEP_ALIVE
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    reload_interval: Seconds = 2.0
    """How often the config file and the models directory are checked for changes; 0: never."""
    shutdown_timeout: Seconds = 10.0
    """On SIGTERM, running requests get this long to finish; streams still open then end
    with an error frame, and every runner is stopped."""
    max_request_size: Size = 8 * 1024**2
    """Larger request bodies are refused with 413 before they are read."""
    header_timeout: Seconds = 10.0
    """A client that does not finish sending a request's headers in this long (or goes quiet
    this long while sending its body) is disconnected."""
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object per log line, with the request id."""
    access_log: bool = True
    """One log line per model request (model, status, tokens, waits; never the prompt)."""
    metrics: bool = True
    """``GET /metrics`` in the Prometheus format; off: 404 and nothing measured."""
    log_max_size: Size = 16 * 1024**2
    """A log file (the gateway's, each model's) is rotated when it grows past this."""
    log_files: int = Field(default=3, ge=1, le=100)
    """Rotated log files kept besides the current one."""
    events_kept: int = Field(default=1000, ge=10, le=1_000_000)
    """Scheduler events kept in memory for ``/api/events``."""
    activity_kept: int = Field(default=200, ge=10, le=100_000)
    """Finished requests kept for ``/api/activity``."""
    database_url: str | None = None
    """Keys, users and the usage ledger: ``<home>/modelyard.db`` (SQLite) by default, or
    ``postgresql+asyncpg://user:pass@host/db``."""
    usage_ledger: bool = True
    """One row per model request in the database (``modelyard usage``)."""
    cors_origins: list[str] = Field(default_factory=list)
    """Web pages on these origins (``http://localhost:3000``; ``*``: any) may call the API
    from a browser; none by default (this server's own pages need no CORS)."""

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            parts = urlsplit(origin)
            plain = parts.scheme in ("http", "https") and parts.netloc and not parts.path
            if origin != "*" and not (plain and not parts.query and not parts.fragment):
                raise ValueError(
                    f"{origin!r} is not an origin: scheme and host, such as "
                    "http://localhost:3000 (no path), or * for any"
                )
        return origins


class _Auth(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["auto", "off", "keys"] = "auto"
    """``auto``: no keys on a loopback address, keys required on any other."""
    allow_signup: bool = False
    """``POST /api/signup`` makes a ``user`` with ``signup_balance`` tokens."""
    signup_balance: int | None = Field(default=None, ge=0)
    """Tokens a new user gets at sign-up; unset: no balance (unlimited)."""
    session_ttl: Seconds = 3600.0
    """How long a login (``POST /api/login``) lasts."""
    max_keep_alive: Seconds | None = None
    """The longest ``keep_alive`` a request of a non-admin may set (it can only lengthen the
    model's own); unset: non-admins' ``keep_alive`` changes nothing."""
    login_attempts: int = Field(default=5, ge=1)
    """Wrong passwords in a row, per user name and per client address, before each further
    try has to wait (1 s, doubling with every miss up to ``login_lockout``)."""
    login_lockout: Seconds = 900.0
    """The longest wait after wrong passwords."""
    signups_per_hour: int = Field(default=5, ge=0)
    """Sign-ups one client address may make in an hour (0: none)."""
    signup_approval: bool = False
    """New sign-ups are disabled until an admin enables them (``modelyard users enable``)."""


CapKey = Literal["all", "chat", "embedding", "rerank"]
"""What ``max_loaded_models`` caps: all models, or those of one kind."""


class _Memory(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ram: Annotated[str | int, BeforeValidator(_budget)] = "80%"
    """Share of the memory available at start, or bytes."""
    gpu: Annotated[str | int, BeforeValidator(_budget)] = "90%"
    """Of each GPU (NVML's): a share of its memory, or bytes."""
    min_residency: Seconds = 1.0
    """A freshly loaded model is not evicted for this long (avoids swap ping-pong)."""
    stop_grace: Seconds = 5.0
    measure_interval: Seconds = 2.0
    """How often the memory of each running model is measured (0: only after loads)."""
    max_loaded_models: (
        Annotated[int, Field(ge=1)] | dict[CapKey, Annotated[int, Field(ge=1)]] | None
    ) = None
    """At most this many models loaded at once (besides the memory budget): a number, or
    per kind (``{ all = 3, chat = 1 }``)."""


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    server: _ServerTable = Field(default_factory=_ServerTable)
    auth: _Auth = Field(default_factory=_Auth)
    memory: _Memory = Field(default_factory=_Memory)
    models: dict[str, ModelEntry] = Field(default_factory=dict)


_DEFAULT = _File()
"""An empty file: the one source of every setting's default, for ``Config`` too (so a test
that makes a ``Config`` runs with what a real server gets)."""
_SERVER, _AUTH, _MEMORY = _DEFAULT.server, _DEFAULT.auth, _DEFAULT.memory


@dataclass(frozen=True)
class Config:
    host: str
    port: int
    home: Path
    models_dir: Path
    ram: str | int
    min_residency: float
    stop_grace: float
    log_level: str
    reload_interval: float = _SERVER.reload_interval
    measure_interval: float = _MEMORY.measure_interval
    shutdown_timeout: float = _SERVER.shutdown_timeout
    max_request_size: int = _SERVER.max_request_size
    header_timeout: float = _SERVER.header_timeout
    log_format: str = _SERVER.log_format
    access_log: bool = _SERVER.access_log
    metrics: bool = _SERVER.metrics
    log_max_size: int = _SERVER.log_max_size
    log_files: int = _SERVER.log_files
    events_kept: int = _SERVER.events_kept
    activity_kept: int = _SERVER.activity_kept
    cors_origins: tuple[str, ...] = tuple(_SERVER.cors_origins)
    database_url: str = _SERVER.database_url or ""
    """Empty: SQLite in ``home``."""
    usage_ledger: bool = _SERVER.usage_ledger
    auth_mode: str = _AUTH.mode
    """``auto``: ``keys`` or ``off`` by the address listened on (``keys_required``)."""
    allow_signup: bool = _AUTH.allow_signup
    signup_balance: int | None = _AUTH.signup_balance
    session_ttl: float = _AUTH.session_ttl
    max_keep_alive: float | None = _AUTH.max_keep_alive
    login_attempts: int = _AUTH.login_attempts
    login_lockout: float = _AUTH.login_lockout
    signups_per_hour: int = _AUTH.signups_per_hour
    signup_approval: bool = _AUTH.signup_approval
    max_loaded: dict[str, int] = field(default_factory=dict)
    """``all`` and/or a kind → the most models loaded at once."""
    gpu: str | int = _MEMORY.gpu
    """The budget of each GPU: a share of its memory, or bytes."""
    models: list[ModelSpec] = field(default_factory=list)
    source: Path | None = None
    """The config file read, or ``None`` when running on defaults."""
    cluster: str = ""
    """The Ray head (``IP:PORT``) whose nodes serve models too; empty: this machine alone."""
    cluster_ip: str = ""
    """This machine's address in the cluster."""
    gateways: bool = False
    """One of several gateways sharing the accounts' PostgreSQL database (one leads)."""
    advertise: str = ""
    """The URL the other gateways reach this one at (default: ``http://host:port``)."""


def keys_required(config: Config) -> bool:
    """Whether requests need a key: ``keys``, or ``auto`` on an address other machines reach."""
    if config.auth_mode == "auto":
        return not is_loopback(config.host)
    return config.auth_mode == "keys"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def database_url(config: Config) -> str:
    return config.database_url or f"sqlite+aiosqlite:///{config.home / 'modelyard.db'}"


def find_config_file(settings: Settings) -> Path | None:
    """``$MODELYARD_CONFIG``, else ``./modelyard.toml``, else ``<home>/modelyard.toml``."""
    if settings.config is not None:
        path = settings.config.expanduser()
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        return path
    for candidate in (Path("modelyard.toml"), settings.data_home() / "modelyard.toml"):
        if candidate.is_file():
            return candidate
    return None


def load_config(settings: Settings | None = None) -> Config:
    settings = settings or Settings()
    source = find_config_file(settings)
    data = _read_toml(source) if source else {}
    origin = str(source) if source else "defaults"
    try:
        parsed = _File.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(origin, exc)) from None

    home = settings.data_home()
    base_dir = source.parent if source else Path.cwd()
    server = parsed.server
    models_dir = settings.models_dir or (
        resolve(server.models_dir, base_dir) if server.models_dir else home / "models"
    )
    keep_alive = server.keep_alive
    explicit = [
        entry_spec(name, entry, base_dir, origin, keep_alive, server.model_dump())
        for name, entry in parsed.models.items()
    ]
    defaults = ModelSpec(
        name="", path=Path(), keep_alive=keep_alive, kv_cache_disk=server.kv_cache_disk
    )
    if server.llama_server:
        defaults = replace(defaults, llama_server=resolve(server.llama_server, base_dir))
    found = discover(models_dir, defaults)
    demo = settings.demo if settings.demo is not None else server.demo
    models = merge(explicit, found, demo_models(defaults, home / "cache") if demo else ())
    check_names(models, origin)

    return Config(
        host=settings.host or server.host,
        cluster=settings.cluster or "",
        cluster_ip=settings.cluster_ip or "",
        gateways=bool(settings.gateways),
        advertise=settings.advertise or "",
        port=settings.port if settings.port is not None else server.port,
        home=home,
        models_dir=models_dir,
        ram=_env_size(settings.ram_budget) if settings.ram_budget else parsed.memory.ram,
        gpu=(
            _env_size(settings.gpu_budget, "MODELYARD_GPU_BUDGET")
            if settings.gpu_budget
            else parsed.memory.gpu
        ),
        min_residency=parsed.memory.min_residency,
        stop_grace=parsed.memory.stop_grace,
        measure_interval=parsed.memory.measure_interval,
        log_level=server.log_level,
        reload_interval=server.reload_interval,
        shutdown_timeout=server.shutdown_timeout,
        max_request_size=server.max_request_size,
        header_timeout=server.header_timeout,
        log_format=settings.log_format or server.log_format,
        access_log=server.access_log,
        metrics=server.metrics,
        log_max_size=server.log_max_size,
        log_files=server.log_files,
        events_kept=server.events_kept,
        activity_kept=server.activity_kept,
        cors_origins=tuple(server.cors_origins),
        database_url=settings.database_url or server.database_url or "",
        usage_ledger=server.usage_ledger,
        auth_mode=settings.auth or parsed.auth.mode,
        allow_signup=parsed.auth.allow_signup,
        signup_balance=parsed.auth.signup_balance,
        session_ttl=parsed.auth.session_ttl,
        max_keep_alive=parsed.auth.max_keep_alive,
        login_attempts=parsed.auth.login_attempts,
        login_lockout=parsed.auth.login_lockout,
        signups_per_hour=parsed.auth.signups_per_hour,
        signup_approval=parsed.auth.signup_approval,
        max_loaded=_max_loaded(parsed.memory.max_loaded_models),
        models=models,
        source=source,
    )


def _max_loaded(value: int | Mapping[CapKey, int] | None) -> dict[str, int]:
    if value is None:
        return {}
    return {"all": value} if isinstance(value, int) else {str(k): n for k, n in value.items()}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def _describe(origin: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        if len(loc) >= 2 and loc[0] == "models":
            table, keys = f"models.{loc[1]}", loc[2:]
        elif loc:
            table, keys = loc[0], loc[1:]
        else:
            table, keys = "", []
        key = ".".join(keys) or "(table)"
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{origin}: [{table}] {key}: {message}")
    return "\n".join(lines)


def _env_size(value: str, name: str = "MODELYARD_RAM_BUDGET") -> str | int:
    try:
        parse_size(value, total=1)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return value
