"""Several gateways in front of one cluster (``serve --gateways``).

Every gateway shares the accounts' PostgreSQL database; one leads (``cluster.election``): it
owns the scheduler, the runners and the Ray driver, as a lone gateway does, and lends leases
to the others (``api.leases``). The others follow: each serves the model routes itself,
with its own keys, balances, ledger rows and metrics, taking a lease from the leader for
each request and sending it straight to the runner (``api.broker``; the rate limits are
the leader's too), and passes every other request on to the leader (``api.forward``).

Each second a follower tries to take the lead, learns who holds it and beats the leader. A
leader that dies loses the lock with its database session; the first follower to try then
leads: it starts its own scheduler (and joins the Ray cluster), and its requests waiting for
a lease take one from it. A leader whose database connection breaks stops: it can no longer
know that nobody else leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import asyncpg
from fastapi import FastAPI

from modelyard.accounts.store import Store
from modelyard.api.app import telemetry
from modelyard.api.broker import Broker, Link
from modelyard.api.leases import Leases
from modelyard.catalog.catalog import Catalog
from modelyard.cluster.election import Election, advertised, dsn_of
from modelyard.config import Config, Settings, database_url
from modelyard.errors import ModelyardError
from modelyard.reload import Reloader
from modelyard.runners.process import bind_runners
from modelyard.scheduler import Scheduler

log = logging.getLogger(__name__)

ROUND = 1.0
"""Seconds between a follower's tries to lead (and its beats to the leader)."""


async def gateway_token(config: Config, store: Store | None) -> str:
    """The token the gateways show each other: made once, kept with the accounts' secrets."""
    own = store is None
    if store is None:
        store = await Store.open(database_url(config))
    try:
        return hashlib.sha256((await store.secret("gateway-token")).encode()).hexdigest()
    finally:
        if own:
            await store.close()


class Gateways:
    """This gateway's part among several (see the module)."""

    def __init__(
        self,
        app: FastAPI,
        config: Config,
        settings: Settings | None,
        lead: Callable[[], Awaitable[Scheduler]],
    ) -> None:
        self._app = app
        self._config = config
        self._settings = settings
        self._lead = lead
        self._watcher: asyncio.Task[None] | None = None
        """A follower's: its catalog follows the files, as the leader's does."""
        self._election = Election(dsn_of(database_url(config)), advertised(config))
        self._broker: Broker | None = None
        self._watch: asyncio.Task[None] | None = None
        self._token = ""

    @property
    def leading(self) -> bool:
        return self._election.leading

    async def start(self) -> None:
        accounts = self._app.state.accounts
        self._token = await gateway_token(self._config, accounts.store if accounts else None)
        link = Link(self._election.url, self._token)
        self._app.state.link = link
        if await self._election.try_lead():
            await self._take_lead(link)
        else:
            self._follow(link)
            link.follow(await self._election.leader())
            log.info("gateway %s follows the gateway at %s", link.name, link.leader)
        self._watch = asyncio.create_task(self._rounds(link), name="gateways")

    async def _take_lead(self, link: Link) -> None:
        log.info("gateway %s leads", link.name)
        host = urlsplit(link.name).hostname
        if host:  # the other gateways reach this one's runners where they reach it
            bind_runners(host)
        if self._watcher is not None:
            self._watcher.cancel()  # the scheduler's own reloader takes over
        scheduler = await self._lead()
        accounts = self._app.state.accounts
        if accounts is not None:
            accounts.shared = None  # the rate limits are counted here from now on
        leases = Leases(scheduler, self._token, limiter=accounts.limiter if accounts else None)
        leases.start()
        self._app.state.leases = leases
        link.promote(scheduler)

    def _follow(self, link: Link) -> None:
        app = self._app
        accounts = app.state.accounts
        self._broker = Broker(
            Catalog(self._config.models),
            link,
            app.state.upstream,
            accounts.limiter if accounts is not None else None,
        )
        if accounts is not None:
            accounts.shared = self._broker  # the leader counts every gateway's requests
        app.state.scheduler = self._broker
        app.state.telemetry = telemetry(self._config, self._broker, app.state.accounts)  # type: ignore[arg-type]
        if self._settings is not None and self._config.reload_interval > 0:
            reloader = Reloader(self._config, self._settings, self._broker)
            self._watcher = asyncio.create_task(
                reloader.watch(self._config.reload_interval), name="catalog watcher"
            )

    async def _rounds(self, link: Link) -> None:
        while True:
            await asyncio.sleep(ROUND)
            try:
                if not await self._round(link):
                    return
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("gateways: the database did not answer: %s", exc)

    async def _round(self, link: Link) -> bool:
        """One round; ``False`` once this gateway stops."""
        if self._election.leading:
            if not await self._election.still_leading():
                log.error(
                    "gateway %s lost its database connection, and with it the lead: "
                    "stopping (another gateway may lead now)",
                    link.name,
                )
                os.kill(os.getpid(), signal.SIGTERM)
                return False
            return True
        if await self._election.try_lead():
            log.warning("the leading gateway %s is gone: this gateway leads now", link.leader)
            await self._take_lead(link)
            return True
        link.follow(await self._election.leader())
        if self._broker is not None and link.leader is not None:
            with contextlib.suppress(ModelyardError):
                await self._broker.beat()
        return True

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        leases: Leases | None = self._app.state.leases
        if leases is not None:
            leases.close()
        if self._broker is not None:
            await self._broker.close()

    async def resign(self) -> None:
        """Leaves the election: another gateway may lead (once this one's runners are
        stopped, so that two never hold the same memory)."""
        await self._election.close()
