"""``GET /metrics``: the router's own metrics in the Prometheus text format, then the engines'.

Three sources:
- per request (``observe``, called once a model request has ended): counts by model, route
  and status, the waits (queue, load), time to first token, time per output token, tokens;
- scheduler decisions (``on_event``, a scheduler listener): loads and their duration,
  evictions by reason, runner exits, refusals by reason;
- the scheduler's state, read when scraped (``_StateCollector``): queue depth, in flight,
  loaded, memory per model (estimate and measured), the budget and what is in use.

The engines' own metrics (llama.cpp's ``/metrics``) of every *loaded* model follow, each
sample with a ``model`` label; scraping never loads or wakes a model, and an engine that
does not answer within ``ENGINE_TIMEOUT`` is left out of this scrape and counted in
``modelyard_engine_scrape_failures_total``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from modelyard.engines import engine_of
from modelyard.scheduler import ModelState, Scheduler
from modelyard.scheduler.event import (
    Event,
    Evicted,
    KvDiscarded,
    KvMissed,
    KvRestored,
    KvSaved,
    LoadFailed,
    LoadFinished,
    Refused,
    RunnerExited,
)

if TYPE_CHECKING:
    from modelyard.api.telemetry import Trace

# ``*_created`` series double every counter and histogram and nobody graphs them.
disable_created_metrics()  # type: ignore[no-untyped-call]

ENGINE_TIMEOUT = 0.1
"""Seconds an engine's ``/metrics`` may take before it is left out of a scrape."""

_WAIT_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1)
_LOAD_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


_KV_MOVED = (KvRestored, KvSaved)
_KV_STATES = (KvRestored, KvSaved, KvDiscarded)
"""Built once: every event (two a request) is tested against them."""


class Metrics:
    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "modelyard_requests",
            "Model requests answered",
            ["model", "route", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "modelyard_request_duration_seconds",
            "Time from request to the last byte",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "modelyard_queue_wait_seconds",
            "Time waiting in the model's queue (loads excluded)",
            ["model"],
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.load_wait = Histogram(
            "modelyard_load_wait_seconds",
            "Time a request waited for its model to load",
            ["model"],
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "modelyard_time_to_first_token_seconds",
            "Time from request to the first token (streams; else the engine's prompt time)",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "modelyard_time_per_output_token_seconds",
            "Time per generated token after the first",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "modelyard_tokens",
            "Tokens, as the engine reported them",
            ["model", "type"],
            registry=r,
        )
        self.loads = Counter(
            "modelyard_model_loads", "Model loads by outcome", ["model", "outcome"], registry=r
        )
        self.load_duration = Histogram(
            "modelyard_model_load_duration_seconds",
            "Time from load start to ready",
            ["model"],
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.evictions = Counter(
            "modelyard_evictions", "Models unloaded, by reason", ["model", "reason"], registry=r
        )
        self.exits = Counter(
            "modelyard_runner_exits",
            "Runner processes that ended (expected: stopped by us)",
            ["model", "expected"],
            registry=r,
        )
        self.rejections = Counter(
            "modelyard_rejections",
            "Requests refused, by reason",
            ["model", "reason"],
            registry=r,
        )
        self.engine_failures = Counter(
            "modelyard_engine_scrape_failures",
            "Engines left out of a scrape (no answer in time, or an error)",
            ["model"],
            registry=r,
        )
        self.kv_loads = Counter(
            "modelyard_kv_restores",
            "Loads of llama.cpp models with warm swaps: hit (saved conversations restored) "
            "or miss (none to restore)",
            ["model", "outcome"],
            registry=r,
        )
        self.kv_states = Counter(
            "modelyard_kv_states",
            "Saved conversations (slot KV states), by what happened to them",
            ["model", "action"],
            registry=r,
        )
        self.kv_bytes = Counter(
            "modelyard_kv_bytes",
            "Bytes of conversations saved to or restored from disk",
            ["model", "action"],
            registry=r,
        )
        r.register(_StateCollector(scheduler))
        self._counted: dict[tuple[str, str, int], Counter] = {}
        self._series: dict[str, _ModelSeries] = {}

    # ---- sources ------------------------------------------------------------------------

    def observe(self, trace: Trace) -> None:
        model = trace.model
        key = (model, trace.route, trace.status)
        counter = self._counted.get(key)
        if counter is None:
            counter = self._counted[key] = self.requests.labels(model, trace.route, str(key[2]))
        counter.inc()
        if not model or trace.lease_at is None:
            return  # refused before it had a lease: counted above (and as a rejection)
        series = self._series.get(model) or self._series_of(model)
        series.duration.observe(trace.total)
        series.queue_wait.observe(trace.queue_wait)
        if trace.load_wait > 0:
            series.load_wait.observe(trace.load_wait)
        if trace.ttft is not None:
            series.ttft.observe(trace.ttft)
        tpot = trace.tpot
        if tpot is not None:
            series.tpot.observe(tpot)
        if trace.prompt_tokens:
            series.prompt_tokens.inc(trace.prompt_tokens)
        if trace.completion_tokens:
            series.completion_tokens.inc(trace.completion_tokens)

    def _series_of(self, model: str) -> _ModelSeries:
        """A model's children, looked up once (``labels`` costs a lock and a tuple)."""
        series = _ModelSeries(
            self.duration.labels(model),
            self.queue_wait.labels(model),
            self.load_wait.labels(model),
            self.ttft.labels(model),
            self.tpot.labels(model),
            self.tokens.labels(model, "prompt"),
            self.tokens.labels(model, "completion"),
        )
        self._series[model] = series
        return series

    def on_event(self, event: Event) -> None:
        if isinstance(event, LoadFinished):
            self.loads.labels(event.model, "ok").inc()
            self.load_duration.labels(event.model).observe(event.seconds)
        elif isinstance(event, LoadFailed):
            self.loads.labels(event.model, "failed").inc()
            self.load_duration.labels(event.model).observe(event.seconds)
        elif isinstance(event, Evicted):
            self.evictions.labels(event.model, event.reason).inc()
        elif isinstance(event, RunnerExited):
            self.exits.labels(event.model, "true" if event.expected else "false").inc()
        elif isinstance(event, Refused):
            self.rejections.labels(event.model, event.reason).inc()
        elif isinstance(event, _KV_STATES):
            action = event.verb if isinstance(event, _KV_MOVED) else "discarded"
            self.kv_states.labels(event.model, action).inc(event.states)
            self.kv_bytes.labels(event.model, action).inc(event.bytes)
            if isinstance(event, KvRestored):
                self.kv_loads.labels(event.model, "hit").inc()
        elif isinstance(event, KvMissed):
            self.kv_loads.labels(event.model, "miss").inc()

    # ---- the scrape ---------------------------------------------------------------------

    async def render(self, engines: aiohttp.ClientSession) -> bytes:
        """The whole exposition: ours, then every loaded engine's (within the timeout)."""
        theirs = await self._engine_metrics(engines)
        return generate_latest(self.registry) + _exposition(theirs)

    async def _engine_metrics(self, session: aiohttp.ClientSession) -> list[Metric]:
        targets = []
        for status in self._scheduler.status():
            spec = status.spec
            path = engine_of(spec).metrics_path(spec)
            if status.state is not ModelState.READY or path is None:
                continue
            for index, running in self._scheduler.runners(status.name).items():
                # A model that may run several runners: each one's series has its number.
                replica = str(index) if spec.max_replicas > 1 else None
                url = running.base_url + path
                targets.append((status.name, replica, url, dict(running.headers)))

        async def fetch(
            name: str, replica: str | None, url: str, headers: dict[str, str]
        ) -> list[Metric]:
            try:
                async with asyncio.timeout(ENGINE_TIMEOUT):
                    async with session.get(url, headers=headers) as response:
                        if response.status != 200:
                            raise ValueError(f"status {response.status}")
                        text = await response.text()
                labels = {"model": name} | ({"replica": replica} if replica else {})
                return _labelled(text_string_to_metric_families(text), labels)
            except (TimeoutError, aiohttp.ClientError, ValueError):
                self.engine_failures.labels(name).inc()
                return []

        results = await asyncio.gather(*(fetch(*target) for target in targets))
        return _merge(results)


@dataclass(frozen=True, slots=True)
class _ModelSeries:
    duration: Histogram
    queue_wait: Histogram
    load_wait: Histogram
    ttft: Histogram
    tpot: Histogram
    prompt_tokens: Counter
    completion_tokens: Counter


class _StateCollector(Collector):
    """Gauges read from the scheduler at scrape time (nothing to keep in step)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        queue = GaugeMetricFamily(
            "modelyard_queue_depth", "Requests waiting for the model", labels=["model"]
        )
        in_flight = GaugeMetricFamily(
            "modelyard_in_flight", "Requests being answered by the model", labels=["model"]
        )
        loaded = GaugeMetricFamily(
            "modelyard_model_loaded", "1 while the model is ready", labels=["model"]
        )
        memory = GaugeMetricFamily(
            "modelyard_model_memory_bytes",
            "Memory of a model: its estimate, and the most it was measured to use",
            labels=["model", "device", "source"],
        )
        held = GaugeMetricFamily(
            "modelyard_model_held_bytes",
            "Memory a model's runners hold now, as the budget counts it",
            labels=["model", "node", "device"],
        )
        for status in self._scheduler.status():
            name = status.name
            queue.add_metric([name], status.queued)
            in_flight.add_metric([name], status.in_flight)
            loaded.add_metric([name], 1 if status.state is ModelState.READY else 0)
            for device, n in status.estimate.items():
                memory.add_metric([name, device, "estimate"], n)
            for device, n in (status.measured or {}).items():
                memory.add_metric([name, device, "measured"], n)
            for node, footprint in status.held_on.items():
                for device, n in footprint.items():
                    held.add_metric([name, node, device], n)
        budget = GaugeMetricFamily(
            "modelyard_memory_budget_bytes", "The memory budget", labels=["node", "device"]
        )
        used = GaugeMetricFamily(
            "modelyard_memory_used_bytes",
            "Memory held by loaded and loading models, as the budget counts it",
            labels=["node", "device"],
        )
        reserved = self._scheduler.reserved_on()
        for node, devices in self._scheduler.budgets().items():
            for device, n in devices.items():
                budget.add_metric([node, device], n)
                used.add_metric([node, device], reserved.get(node, {}).get(device, 0))
        yield from (queue, in_flight, loaded, memory, held, budget, used)


def _labelled(families: Iterable[Metric], added: dict[str, str]) -> list[Metric]:
    """The families with the ``added`` labels (``model``, ``replica``) on every sample, and
    names made Prometheus-plain (llama.cpp's ``llamacpp:x`` becomes ``llamacpp_x``: colons
    are for recording rules)."""
    out = []
    for family in families:
        name = family.name.replace(":", "_")
        copy = Metric(name, family.documentation, family.type, family.unit)
        for s in family.samples:
            labels = {**s.labels, **added}
            copy.add_sample(s.name.replace(":", "_"), labels, s.value, s.timestamp)
        out.append(copy)
    return out


def _merge(per_engine: list[list[Metric]]) -> list[Metric]:
    """One family per name, with the samples of every engine (the format wants them
    together, under one HELP and TYPE). A family named like one of ours, or like another
    engine's of a different type, is left out: the exposition must stay valid."""
    merged: dict[str, Metric] = {}
    for families in per_engine:
        for family in families:
            if family.name.startswith("modelyard_"):
                continue
            into = merged.setdefault(
                family.name, Metric(family.name, family.documentation, family.type, family.unit)
            )
            if into.type == family.type:
                into.samples.extend(family.samples)
    return list(merged.values())


def _exposition(families: list[Metric]) -> bytes:
    if not families:
        return b""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families
