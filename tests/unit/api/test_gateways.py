"""Several gateways: the leader's book of leases (on a scheduler with fake runners), a
follower's broker against a leader it cannot trust to answer, and the election on a real
PostgreSQL. (Two real gateways and a real runner: ``tests/integration/test_gateways.py``.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from modelyard.api import broker as broker_module
from modelyard.api.broker import Broker, BrokeredLease, Link, relayed
from modelyard.api.leases import TOKEN_HEADER, Leases
from modelyard.api.proxy import Upstream
from modelyard.catalog.catalog import Catalog
from modelyard.catalog.spec import ModelSpec
from modelyard.cluster.election import Election, advertised, dsn_of
from modelyard.config import Config
from modelyard.errors import AuthenticationError, ConfigError, UpstreamError
from modelyard.runners.process import free_port
from modelyard.scheduler import Scheduler
from tests.fake import FakeRunner, ManualClock, settle
from tests.postgres import PostgresServer

CHAT = ModelSpec(name="chat", path=Path("/models/chat.gguf"), parallel=1, max_queue=8)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def book(silence: float = 5.0) -> tuple[Leases, Scheduler, Clock]:
    scheduler = Scheduler(
        Catalog([CHAT]), {"llamacpp": FakeRunner()}, {"ram": 10**9}, clock=ManualClock()
    )
    clock = Clock()
    return Leases(scheduler, "t0ken", silence=silence, clock=clock), scheduler, clock


def in_flight(scheduler: Scheduler) -> int:
    (status,) = scheduler.status()
    return status.in_flight


async def take(leases: Leases, ident: str, gateway: str = "http://b") -> object:
    return await leases.acquire(
        ident, gateway, "chat", None, request=f"r-{ident}", client="k", weight=1.0
    )


async def test_a_lease_lent_and_given_back_is_the_schedulers_own() -> None:
    leases, scheduler, _ = book()
    lease = await take(leases, "one")
    assert lease is not None
    assert leases.held == 1
    assert in_flight(scheduler) == 1
    assert await take(leases, "one") is lease  # asked again: the same, not a second
    assert in_flight(scheduler) == 1
    leases.release("one", served=True)
    leases.release("one", served=True)  # twice: nothing more
    assert leases.held == 0
    assert in_flight(scheduler) == 0


async def test_a_release_that_comes_before_its_lease_means_no_lease_is_taken() -> None:
    leases, scheduler, _ = book()
    leases.release("early", served=False)
    assert await take(leases, "early") is None
    assert leases.held == 0
    assert in_flight(scheduler) == 0


async def test_a_release_while_waiting_gives_up_the_wait_and_keeps_the_queue_clean() -> None:
    leases, scheduler, _ = book()
    assert await take(leases, "first") is not None
    waiting = asyncio.ensure_future(take(leases, "second"))
    await settle()
    assert not waiting.done()
    leases.release("second", served=False)
    assert await waiting is None
    (status,) = scheduler.status()
    assert status.queued == 0
    leases.release("first", served=True)
    assert in_flight(scheduler) == 0


async def test_a_gateway_gone_silent_loses_its_leases_and_its_waits() -> None:
    leases, scheduler, clock = book(silence=5.0)
    assert await take(leases, "held", "http://dead") is not None
    waiting = asyncio.ensure_future(take(leases, "queued", "http://dead"))
    await settle()
    leases.beat("http://alive")
    clock.now = 3.0
    leases.beat("http://alive")
    assert leases.sweep() == []
    clock.now = 6.0
    assert leases.sweep() == ["http://dead"]
    assert await waiting is None
    assert leases.held == 0
    assert in_flight(scheduler) == 0
    assert set(leases.gateways()) == {"http://alive"}


async def test_only_a_gateway_with_the_token_may_take_leases() -> None:
    leases, _, _ = book()
    leases.check("t0ken")
    for wrong in (None, "", "t0ken2", "T0KEN"):
        with pytest.raises(AuthenticationError):
            leases.check(wrong)


# ---- the follower's broker against a leader of our own making ------------------------------


class Leader:
    """A leader whose answers the test decides."""

    def __init__(self) -> None:
        self.released: list[str] = []
        self.hold = asyncio.Event()
        self.answer: web.Response | None = None

    async def lease(self, request: web.Request) -> web.Response:
        assert request.headers[TOKEN_HEADER] == "t0ken"
        if self.answer is not None:
            return self.answer
        await self.hold.wait()
        return web.json_response({})

    async def release(self, request: web.Request) -> web.Response:
        self.released.append((await request.json())["id"])
        return web.Response(status=204)


@pytest.fixture
async def leader() -> AsyncIterator[tuple[Leader, str]]:
    fake = Leader()
    app = web.Application()
    app.router.add_post("/api/gateway/lease", fake.lease)
    app.router.add_post("/api/gateway/release", fake.release)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield fake, f"http://127.0.0.1:{port}"
    fake.hold.set()
    await runner.cleanup()


async def test_a_client_leaving_while_the_lease_is_awaited_gives_the_lease_back(
    leader: tuple[Leader, str],
) -> None:
    fake, url = leader
    link = Link("http://me", "t0ken")
    link.follow(url)
    upstream = Upstream()
    broker = Broker(Catalog([CHAT]), link, upstream)
    try:
        asking = asyncio.ensure_future(broker.acquire("chat"))
        await asyncio.sleep(0.2)
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
        await broker.close()
        assert len(fake.released) == 1  # the lease it asked for, by the name it gave
    finally:
        await upstream.close()


async def test_the_leaders_refusal_reaches_the_client_as_it_was(
    leader: tuple[Leader, str],
) -> None:
    fake, url = leader
    fake.answer = web.json_response(
        {"error": {"message": "queue full", "type": "rate_limit_error", "code": "queue_full"}},
        status=429,
        headers={"Retry-After": "3"},
    )
    link = Link("http://me", "t0ken")
    link.follow(url)
    upstream = Upstream()
    try:
        with pytest.raises(UpstreamError) as refused:
            await Broker(Catalog([CHAT]), link, upstream).acquire("chat")
        error = refused.value
        assert (error.status, error.code, error.message) == (429, "queue_full", "queue full")
        assert error.retry_after == 3.0
    finally:
        await upstream.close()


async def test_with_no_leader_to_be_found_a_request_waits_then_gets_a_503(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(broker_module, "FAILOVER", 0.5)
    link = Link("http://me", "t0ken")
    link.follow(f"http://127.0.0.1:{free_port()}")  # nobody listens
    upstream = Upstream()
    try:
        with pytest.raises(UpstreamError) as refused:
            await Broker(Catalog([CHAT]), link, upstream).acquire("chat")
        assert (refused.value.status, refused.value.code) == (503, "no_leader")
    finally:
        await upstream.close()


async def test_a_request_waiting_for_a_leader_takes_its_lease_here_once_this_gateway_leads() -> (
    None
):
    link = Link("http://me", "t0ken")
    upstream = Upstream()
    scheduler = Scheduler(
        Catalog([CHAT]), {"llamacpp": FakeRunner()}, {"ram": 10**9}, clock=ManualClock()
    )
    broker = Broker(Catalog([CHAT]), link, upstream)
    try:
        asking = asyncio.ensure_future(broker.acquire("chat"))
        await asyncio.sleep(0.1)
        assert not asking.done()  # no leader yet
        link.promote(scheduler)
        lease = await asyncio.wait_for(asking, 5)
        assert not isinstance(lease, BrokeredLease)
        assert in_flight(scheduler) == 1
        broker.release(lease, served=True)
        assert in_flight(scheduler) == 0
    finally:
        await upstream.close()


def test_a_leaders_error_that_is_no_json_still_says_what_happened() -> None:
    error = relayed(502, b"<html>bad gateway</html>", {})
    assert error.status == 502
    assert "502" in error.message


# ---- where a gateway says it is, and the election ------------------------------------------


def _config(host: str, port: int) -> Config:
    return Config(
        host=host,
        port=port,
        home=Path("/h"),
        models_dir=Path("/m"),
        ram="80%",
        min_residency=0,
        stop_grace=1,
        log_level="info",
    )


def test_a_gateway_on_every_address_must_say_where_the_others_reach_it() -> None:
    config = _config("0.0.0.0", 8000)
    with pytest.raises(ConfigError, match="--advertise"):
        advertised(config)
    assert advertised(replace(config, advertise="http://10.0.0.5:8000/")) == (
        "http://10.0.0.5:8000"
    )
    assert advertised(_config("127.0.0.1", 8001)) == "http://127.0.0.1:8001"


def test_several_gateways_need_postgresql() -> None:
    with pytest.raises(ConfigError, match="PostgreSQL"):
        dsn_of("sqlite+aiosqlite:///x.db")
    assert dsn_of("postgresql+asyncpg://u:p@h:5/db") == "postgresql://u:p@h:5/db"


async def test_one_gateway_leads_the_others_find_it_and_the_lead_passes_on(
    postgres: PostgresServer,
) -> None:
    dsn = dsn_of(await postgres.new_database())
    a, b = Election(dsn, "http://a:1"), Election(dsn, "http://b:2")
    try:
        assert await a.try_lead()
        assert not await b.try_lead()
        assert await b.leader() == "http://a:1"
        assert await a.still_leading()
        assert not await b.still_leading()
        await a.close()  # as a leader's death: its session ends
        assert await b.leader() is None
        assert await b.try_lead()
        assert await b.leader() == "http://b:2"
    finally:
        await a.close()
        await b.close()
    with pytest.raises(ConfigError, match="longer"):
        Election(dsn, "http://" + "x" * 60)


def test_a_leader_takes_the_clients_address_from_a_gateway_only() -> None:
    from types import SimpleNamespace

    from modelyard.api.forward import _from_gateway

    leases, _, _ = book()
    app = SimpleNamespace(state=SimpleNamespace(leases=leases))

    def seen(*headers: tuple[bytes, bytes]) -> object:
        scope = {"app": app, "client": ("10.0.0.9", 5000), "headers": list(headers)}
        _from_gateway(scope)
        return scope["client"]

    forwarded = (b"x-forwarded-for", b"192.168.1.7")
    assert seen(forwarded, (TOKEN_HEADER.encode(), b"t0ken")) == ("192.168.1.7", 0)
    assert seen(forwarded) == ("10.0.0.9", 5000)  # a client's own header counts for nothing
    assert seen(forwarded, (TOKEN_HEADER.encode(), b"guess")) == ("10.0.0.9", 5000)


def test_the_leader_counts_every_gateways_requests_against_one_rate_limit() -> None:
    from modelyard.accounts.identity import Limits
    from modelyard.accounts.limits import RateLimiter
    from modelyard.errors import RateLimitError

    clock = Clock()
    scheduler = Scheduler(
        Catalog([CHAT]), {"llamacpp": FakeRunner()}, {"ram": 10**9}, clock=ManualClock()
    )
    limiter = RateLimiter(clock)
    leases = Leases(scheduler, "t0ken", limiter=limiter, clock=clock)
    subjects = [("key:k1", Limits(rpm=3, max_concurrent=2))]
    own = limiter.admit(subjects, 10)  # the leader's own request
    headers = leases.admit("a1", "http://b", subjects, 10)
    assert headers["x-ratelimit-remaining-requests"] == "1"
    with pytest.raises(RateLimitError, match="at once"):
        leases.admit("a2", "http://c", subjects, 10)  # two running already
    leases.finish("a1", 7)
    limiter.finish(own, 5)
    leases.admit("a3", "http://c", subjects, 10)
    with pytest.raises(RateLimitError, match="per minute"):
        leases.admit("a4", "http://b", subjects, 10)  # the fourth in a minute

    # A gateway gone silent frees the places its requests held.
    one = [("key:k2", Limits(max_concurrent=1))]
    leases.admit("c1", "http://c", one, 1)
    with pytest.raises(RateLimitError):
        leases.admit("b1", "http://b", one, 1)
    clock.now = 6.0
    leases.beat("http://b")
    assert leases.sweep() == ["http://c"]
    leases.admit("b2", "http://b", one, 1)
