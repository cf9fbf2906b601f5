"""The ASGI application: routes, the error handler, and the lifespan that owns the scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from modelyard import __version__
from modelyard.accounts.service import Accounts
from modelyard.accounts.store import Store
from modelyard.api import accounts as accounts_routes
from modelyard.api import (
    admin,
    anthropic,
    errors,
    models,
    observe,
    ollama,
    openai,
    passthrough,
    responses,
    ui,
)
from modelyard.api.auth import Auth
from modelyard.api.forward import Forward
from modelyard.api.front import App, RequestId
from modelyard.api.guard import Guard
from modelyard.api.lane import Lane, model_endpoints
from modelyard.api.openapi import document_errors
from modelyard.api.proxy import Upstream
from modelyard.api.routes import MODEL_ROUTES
from modelyard.api.telemetry import Observe, Telemetry
from modelyard.catalog import gguf
from modelyard.catalog.catalog import Catalog
from modelyard.clock import Clock
from modelyard.config import Config, Settings, database_url, is_loopback, keys_required
from modelyard.engines import default_runners
from modelyard.logbook import Rotation
from modelyard.reload import Reloader
from modelyard.runners.base import Runner
from modelyard.runners.gpu import Gpus, detect
from modelyard.scheduler import Scheduler
from modelyard.scheduler.budget import MeasuredFootprints, resolve_budget
from modelyard.scheduler.journal import Journal

if TYPE_CHECKING:
    from modelyard.api.gateways import Gateways
    from modelyard.cluster.members import Cluster

log = logging.getLogger(__name__)

ROUTERS = (
    openai.router,
    anthropic.router,
    responses.router,
    ollama.router,
    admin.router,
    models.router,
    observe.router,
    accounts_routes.router,
    passthrough.router,
    ui.router,
)
"""Every API's routes, included as they are (no prefix, no dependencies)."""


async def _estimates(scheduler: Scheduler, home: Path) -> None:
    """Reads every model's estimate in a thread, from the GGUF headers the last run read
    where their files have not changed (a thousand take minutes to read again)."""
    headers = home / "cache" / "gguf-headers.json"
    await asyncio.to_thread(gguf.remember, headers)
    await scheduler.prepare()
    await asyncio.to_thread(gguf.keep, headers)


def _cluster(
    config: Config, scheduler: Scheduler, runners: Mapping[str, Runner], upstream: Upstream
) -> Cluster | None:
    """The nodes of ``config.cluster``'s Ray cluster, joined in the background (``None``:
    this machine alone; Ray is imported only in cluster mode)."""
    if not config.cluster:
        return None
    from modelyard.cluster.members import Cluster

    cluster = Cluster(
        scheduler, runners, config.cluster, ip=config.cluster_ip or None, sever=upstream.sever
    )
    cluster.start()
    return cluster


class Leading:
    """The scheduler's lifetime in a gateway that leads (every gateway that is alone): it
    starts with the gateway, or when the gateway takes the lead (``api.gateways``), and
    stops with the gateway."""

    def __init__(
        self,
        app: FastAPI,
        config: Config,
        settings: Settings | None,
        *,
        runners: Mapping[str, Runner] | None,
        budget: Mapping[str, int] | None,
        clock: Clock | None,
    ) -> None:
        self._app = app
        self._config = config
        self._settings = settings
        self._runners = runners
        self._budget = budget
        self._clock = clock
        self._scheduler: Scheduler | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> Scheduler:
        app, config = self._app, self._config
        rotation = Rotation(config.log_max_size, config.log_files)
        found: Gpus = app.state.gpus
        local = self._runners or default_runners(config.home, rotation, found)
        budget = self._budget
        scheduler = Scheduler(
            Catalog(config.models),
            local,
            dict(budget) if budget is not None else resolve_budget(config.ram, config.gpu, found),
            clock=self._clock,
            min_residency=config.min_residency,
            stop_grace=config.stop_grace,
            measured=MeasuredFootprints(config.home / "footprints.json"),
            measure_interval=config.measure_interval,
            journal=Journal(config.events_kept),
            max_loaded=config.max_loaded,
        )
        self._scheduler = scheduler
        # Model headers are read in a thread while the server already answers; a request
        # that comes first reads its own model's.
        self._tasks.append(
            asyncio.create_task(_estimates(scheduler, config.home), name="estimates")
        )
        scheduler.start_measuring()
        app.state.scheduler = scheduler
        app.state.telemetry = telemetry(config, scheduler, app.state.accounts)
        app.state.cluster = _cluster(config, scheduler, local, app.state.upstream)
        app.state.preload = _preload(scheduler, [spec.name for spec in config.models])
        app.state.reloader = None
        if self._settings is not None:
            reloader = Reloader(
                config,
                self._settings,
                scheduler,
                preload=lambda names: _preload(scheduler, names),
            )
            app.state.reloader = reloader
            if config.reload_interval > 0:
                self._tasks.append(
                    asyncio.create_task(
                        reloader.watch(config.reload_interval), name="catalog watcher"
                    )
                )
        return scheduler

    async def close(self) -> None:
        if self._scheduler is None:
            return
        app = self._app
        for task in self._tasks:
            task.cancel()
        if app.state.preload is not None:
            app.state.preload.cancel()
        await self._scheduler.close(grace=0.0 if app.state.stop_now else None)
        if app.state.cluster is not None:
            await app.state.cluster.close()  # after the runners on its nodes are stopped


def telemetry(config: Config, scheduler: Scheduler, accounts: Accounts | None) -> Telemetry:
    """The request log and metrics of a gateway serving through ``scheduler``."""
    return Telemetry(
        scheduler,
        metrics=config.metrics,
        access_log=config.access_log,
        activity_kept=config.activity_kept,
        accounts=accounts,
    )


def create_app(
    config: Config,
    *,
    settings: Settings | None = None,
    runners: Mapping[str, Runner] | None = None,
    budget: Mapping[str, int] | None = None,
    clock: Clock | None = None,
    gpus: Gpus | None = None,
) -> FastAPI:
    """The server for ``config``; tests may replace the runners, budget and clock.

    With ``settings`` (what ``config`` was loaded from), the catalog can be reloaded while
    serving, and is every ``config.reload_interval`` seconds when the files change.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.gpus = gpus if gpus is not None else detect()
        app.state.config = config
        app.state.accounts = accounts = await _accounts(config)
        app.state.upstream = Upstream()
        app.state.started_at = time.time()
        leading = Leading(app, config, settings, runners=runners, budget=budget, clock=clock)
        gateways: Gateways | None = None
        try:
            if config.gateways:
                from modelyard.api.gateways import Gateways

                gateways = Gateways(app, config, settings, leading.start)
                await gateways.start()
            else:
                await leading.start()
            # What start-up made lives as long as the server: the collector never needs to
            # walk it again (each of its full passes did, every few thousand requests).
            gc.collect()
            gc.freeze()
            yield
        finally:
            if gateways is not None:
                await gateways.close()
            await leading.close()
            if gateways is not None:
                await gateways.resign()
            await app.state.upstream.close()
            telemetry = getattr(app.state, "telemetry", None)
            if telemetry is not None:
                telemetry.flush()  # the last requests' books (access log lines, ledger rows)
            if accounts is not None:
                await accounts.close()  # after the last request: its usage row is written

    app = App(
        title="modelyard",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # ``api.ui`` serves it, from files of its own
        redoc_url=None,
    )
    app.state.accounts = None
    app.state.cluster = None
    app.state.link = None  # several gateways: who leads (``api.broker.Link``)
    app.state.leases = None  # the leading one's leases to the others
    app.state.preload = None
    app.state.reloader = None
    app.state.stopping = asyncio.Event()  # set as shutdown begins: live followers end
    app.state.stop_now = False  # set by a second Ctrl-C: runners get no grace
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/ui", ui.assets(), name="ui")
    app.mount("/docs/assets", ui.docs_assets(), name="docs-assets")
    document_errors(app)
    trusted = frozenset(o for o in config.cors_origins if o != "*")
    # The gateway's layers, outermost last, ahead of FastAPI's own (``api.front``).
    front: ASGIApp = Lane(app.inside, endpoints=model_endpoints(ROUTERS))
    front = Auth(front)
    if config.gateways:
        front = Forward(front)  # a following gateway passes on what it does not serve
    front = Guard(front, max_body=config.max_request_size, trusted_origins=trusted)
    front = RequestId(Observe(front, paths=MODEL_ROUTES))
    if config.cors_origins:
        # Outermost, so that every answer (a 413 or 429 too) carries its headers.
        front = CORSMiddleware(
            front,
            allow_origins=list(config.cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["x-request-id", "retry-after", "server-timing"],
            max_age=600,
        )
    app.front = front
    return app


async def _accounts(config: Config) -> Accounts | None:
    """Keys, users and the ledger, when keys are required or the ledger is on."""
    required = keys_required(config)
    if not required and not is_loopback(config.host):
        log.warning(
            "auth mode is off on %s: anyone who can reach this address can use every model "
            "and the admin routes (load, unload, pull, rm, keys)",
            config.host,
        )
    if not required and not config.usage_ledger:
        return None
    accounts = Accounts(
        await Store.open(database_url(config)),
        required=required,
        session_ttl=config.session_ttl,
        allow_signup=config.allow_signup,
        signup_balance=config.signup_balance,
        ledger=config.usage_ledger,
        max_keep_alive=config.max_keep_alive,
        login_attempts=config.login_attempts,
        login_lockout=config.login_lockout,
        signups_per_hour=config.signups_per_hour,
        signup_approval=config.signup_approval,
    )
    await accounts.start()
    await accounts.bootstrap()
    return accounts


def _preload(scheduler: Scheduler, candidates: list[str]) -> asyncio.Task[None] | None:
    """Loads those of ``candidates`` the catalog marks ``preload`` or ``pinned``."""
    names = [name for name in candidates if _wants_preload(scheduler, name)]
    if not names:
        return None

    async def run() -> None:
        results = await asyncio.gather(
            *(scheduler.load(name, request="preload") for name in names),
            return_exceptions=True,
        )
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                log.error("preloading %s failed: %s", name, result)

    return asyncio.create_task(run(), name="preload")


def _wants_preload(scheduler: Scheduler, name: str) -> bool:
    spec = scheduler.spec(name)
    return spec.preload or spec.pinned
