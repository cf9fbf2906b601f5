"""What the models hold, as the memory budget counts it: per runner, in all, as placement's
snapshot and as ``status()`` reports it. Reads of the models and the ledger, nothing more."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import replace

from modelyard.catalog.spec import Footprint, ModelSpec
from modelyard.runners.gpu import device as gpu_name
from modelyard.scheduler.budget import MemoryLedger
from modelyard.scheduler.model import Model, ModelStatus, ReplicaStatus
from modelyard.scheduler.placement import Holder, Need, Snapshot, total
from modelyard.scheduler.replica import Replica
from modelyard.scheduler.state import RESIDENT, ModelState
from modelyard.scheduler.state import ModelState as S

MODELS = "models"
"""The pseudo-device of the caps on loaded models."""


def caps(max_loaded: Mapping[str, int] | None) -> dict[str, int]:
    """The caps on loaded models as devices: ``all`` is ``models``, a kind ``models:<kind>``."""
    return {
        MODELS if kind == "all" else f"{MODELS}:{kind}": n for kind, n in (max_loaded or {}).items()
    }


def units(spec: ModelSpec, caps: Mapping[str, int]) -> dict[str, int]:
    """The units of the caps a model takes: one of ``models`` and one of its kind's
    (``models:chat``), for the caps there are."""
    keys = (MODELS, f"{MODELS}:{spec.kind}")
    return {key: 1 for key in keys if key in caps}


def start_spec(
    m: Model, r: Replica, node: str | None = None, devices: Collection[str] = ()
) -> ModelSpec:
    """The settings ``r`` starts with: its number, and its share of the model's GPUs when
    each runner gets its own (``gpus_per_replica``): runner N the Nth share, or on ``node``
    (whose budget has ``devices``) a share of GPUs the node has that no other runner of the
    model holds there (each node has its own GPUs)."""
    spec = m.spec
    if not r.index and not spec.gpus_per_replica:
        return spec
    gpus = spec.gpus
    if spec.gpus_per_replica:
        k = spec.gpus_per_replica
        slot = r.index if node is None else _free_share(m, r, node, devices)
        gpus = gpus[slot * k : (slot + 1) * k]
    return replace(spec, replica=r.index, gpus=gpus)


def _free_share(m: Model, r: Replica, node: str, devices: Collection[str]) -> int:
    """Of the model's shares of GPUs, the one ``r`` takes on ``node``: its own number's when
    the node has those GPUs and no other runner there holds them (as on one machine), else
    the first such share; its own number's when there is none."""
    k = m.spec.gpus_per_replica or 1
    held = {
        y.placed.gpus
        for y in m.replicas
        if y is not r and y.node == node and y.state in RESIDENT and y.placed is not None
    }
    shares = [m.spec.gpus[i * k : (i + 1) * k] for i in range(len(m.spec.gpus) // k)]
    free = [
        i
        for i, share in enumerate(shares)
        if share not in held and all(gpu_name(g) in devices for g in share)
    ]
    return r.index if r.index in free or not free else free[0]


def need(
    ledger: MemoryLedger, m: Model, r: Replica, caps: Mapping[str, int], *, evict: bool
) -> tuple[Need, ModelSpec]:
    """What starting (or waking) ``r`` takes, for placement, and the settings it starts
    with. Waking, it takes what it holds awake beyond what it holds asleep, where it sleeps;
    a model's first resident runner takes its units of the caps; with ``gpu_layers =
    "auto"`` placement chooses the layers."""
    if r.state is S.SLEEPING:
        spec = m.run_spec(r)
        asleep = held(ledger, m, r)
        awake = ledger.footprint(spec)
        wake = {d: max(0, n - asleep.get(d, 0)) for d, n in awake.items()}
        return Need(m.spec.name, wake, node=r.node), spec
    spec = start_spec(m, r)
    first = not any(y.state in RESIDENT for y in m.replicas)
    taken = units(spec, caps) if first else {}
    spread = frozenset(y.node for y in m.replicas if y is not r and y.state in RESIDENT)
    only = frozenset(spec.nodes)
    if spec.gpu_layers != "auto":
        footprint = ledger.estimate(spec)
        on = None
        if spec.gpus_per_replica:  # its GPUs, so its footprint, depend on the node

            def on(node: str) -> Footprint:
                devices = ledger.budgets.get(node, {})
                return ledger.estimate(start_spec(m, r, node, devices))

        need = Need(m.spec.name, footprint, taken, evict=evict, spread=spread, nodes=only, on=on)
        return need, spec
    auto = spec

    def layers(n: int) -> Footprint:
        return ledger.estimate(replace(auto, gpu_layers=n))

    return Need(m.spec.name, {}, taken, layers, evict=evict, spread=spread, nodes=only), spec


def held(ledger: MemoryLedger, m: Model, r: Replica) -> Footprint:
    """What ``r`` counts for in the budget: asleep, what it was measured to hold asleep (its
    RAM part until then); else the footprint of its settings."""
    full = ledger.footprint(m.run_spec(r))
    if r.sleeping:
        return r.asleep if r.asleep is not None else {"ram": full.get("ram", 0)}
    return full


def reserved(ledger: MemoryLedger, models: Iterable[Model]) -> dict[str, int]:
    """Memory held by resident runners, per device (of every node)."""
    return total(held(ledger, m, r) for m in models for r in m.replicas if r.state in RESIDENT)


def reserved_on(ledger: MemoryLedger, models: Iterable[Model]) -> dict[str, dict[str, int]]:
    """Memory held by resident runners, per node and device."""
    found: dict[str, list[Footprint]] = {}
    for m in models:
        for r in m.replicas:
            if r.state in RESIDENT:
                found.setdefault(r.node, []).append(held(ledger, m, r))
    return {node: total(parts) for node, parts in found.items()}


def snapshot(
    ledger: MemoryLedger, models: Iterable[Model], caps: Mapping[str, int], min_residency: float
) -> Snapshot:
    """Every runner holding memory, the budget and the caps, as placement sees them."""
    holders = []
    for m in models:
        taken = units(m.spec, caps)
        for r in m.replicas:
            if r.state not in RESIDENT:
                continue
            asleep = r.sleeping
            freeing: Footprint = {}
            if r.state is S.UNLOADING:
                freeing = ledger.footprint(m.run_spec(r))
            elif r.state is S.SLEEPING and not asleep:  # going to sleep: its GPU part
                full = ledger.footprint(m.run_spec(r))
                freeing = {d: n for d, n in full.items() if d != "ram"}
            holder = Holder(
                key=m.key(r),
                model=m.spec.name,
                node=r.node,
                held=held(ledger, m, r),
                freeing=freeing,
                stopping=r.state is S.UNLOADING,
                evictable=r.state is S.READY or asleep,
                busy=r.leases > 0 or bool(m.waiters),
                pinned=m.spec.pinned,
                # A sleeping runner's keep-alive ran out when it fell asleep.
                expires_at=r.slept_at if asleep else r.expires_at,
                last_used=r.last_used,
                loaded_at=r.loaded_at,
                units=taken,
            )
            holders.append(holder)
    return Snapshot(ledger.budgets, holders, caps, min_residency)


def status(ledger: MemoryLedger, m: Model, offset: float) -> ModelStatus:
    """What ``status()`` says of ``m``; ``offset`` turns the clock's times into wall-clock
    times."""
    ready = [r for r in m.replicas if r.state is ModelState.READY]
    expiring = [r.expires_at for r in ready if r.expires_at is not None]
    replicas = tuple(
        ReplicaStatus(
            index=r.index,
            state=r.state,
            in_flight=r.leases,
            loaded_since=r.loaded_at + offset if r.state is ModelState.READY else None,
            expires_at=(
                r.expires_at + offset
                if r.expires_at is not None and r.state is ModelState.READY
                else None
            ),
            pid=getattr(r.running, "pid", None),
            node=r.node,
        )
        for r in m.replicas
        if r.state is not ModelState.STOPPED
    )
    first = ready[0] if ready else m.replicas[0]
    return ModelStatus(
        name=m.spec.name,
        spec=m.pending or m.spec,
        removed=m.removed,
        state=m.state,
        estimate=ledger.estimate_or_empty(m.run_spec(first)),
        measured=ledger.measured(m.run_spec(first)),
        queued=len(m.waiters),
        in_flight=m.leases,
        parallel=m.spec.parallel,
        loaded_since=min(r.loaded_at for r in ready) + offset if ready else None,
        expires_at=(
            max(expiring) + offset if ready and m.idle and len(expiring) == len(ready) else None
        ),
        pinned=m.spec.pinned,
        last_error=m.last_error,
        replicas=replicas if m.spec.max_replicas > 1 else (),
        held=total(held(ledger, m, r) for r in m.replicas if r.state in RESIDENT),
        held_on=reserved_on(ledger, [m]),
    )
