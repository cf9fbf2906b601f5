"""Where a runner goes: placement as a pure function of a snapshot of memory.

``plan(snapshot, need, now)`` decides and the scheduler acts, as ``policy.choose_victims``
decides whom to evict and the scheduler stops them. A snapshot is every runner that holds
memory (``Holder``), the budget of each node per device, and the caps on loaded models;
nothing here reads a clock, a runner or the catalog, so placement is tested with tables.

The memory is counted per ``(node, device)``: a node's ``ram`` and ``gpu0`` are its own, and
a runner frees memory only on its node. Today the scheduler has one node, ``local``; a second
node is one more entry in ``Snapshot.budgets``.

The caps on loaded models (``max_loaded_models``) are devices too, of one unit per model and
shared by every node, so that the same policy chooses whom to evict for a count as for memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from modelyard.catalog.spec import Footprint
from modelyard.scheduler.event import EvictionReason
from modelyard.scheduler.policy import Loaded, choose_victims, fits

LOCAL = "local"
"""The node of a single-machine server."""


@dataclass(frozen=True)
class Holder:
    """A runner that holds memory (loading, ready, stopping or asleep), as placement sees it."""

    key: str
    """How the policy names it: the model's name, ``model@N`` for its runner ``N`` > 0."""
    model: str
    node: str
    held: Footprint
    """What it counts for now (asleep: what it holds asleep)."""
    freeing: Footprint = field(default_factory=dict)
    """Of what it holds, what it is giving back now: all while it stops, its GPU part while
    it goes to sleep."""
    stopping: bool = False
    evictable: bool = True
    """Ready or asleep (a loading or stopping runner is never a victim)."""
    busy: bool = False
    """Holds leases, or its model has requests waiting."""
    pinned: bool = False
    expires_at: float | None = None
    last_used: float = 0.0
    loaded_at: float = 0.0
    units: Footprint = field(default_factory=dict)
    """The units of the caps on loaded models its model takes (``models``, ``models:chat``)."""


@dataclass(frozen=True)
class Snapshot:
    budgets: Mapping[str, Footprint]
    """Per node, bytes per device."""
    holders: Sequence[Holder]
    caps: Mapping[str, int] = field(default_factory=dict)
    """The caps on loaded models, in all nodes together: ``models`` and ``models:<kind>``."""
    min_residency: float = 0.0


@dataclass(frozen=True)
class Need:
    """What a runner about to start (or wake) takes."""

    model: str
    footprint: Footprint
    """Per device, on whichever node it goes to."""
    units: Footprint = field(default_factory=dict)
    """Cap units: a model's first resident runner takes one of each cap there is."""
    layers: Callable[[int], Footprint] | None = None
    """For ``gpu_layers = "auto"``: the footprint with that many layers on the GPUs (``-1``
    all of them); the most layers that fit on the node's GPUs as they are win."""
    node: str | None = None
    """It must go there (a sleeping runner wakes where it sleeps)."""
    evict: bool = True
    """It may evict (``False``: it starts only in memory free now, as a scale-up does)."""
    spread: frozenset[str] = frozenset()
    """Nodes that run its model's other runners: others are preferred."""
    nodes: frozenset[str] = frozenset()
    """The only nodes it may go to (a catalog entry's ``nodes``); empty: any."""
    on: Callable[[str], Footprint] | None = None
    """Its footprint on a node, where that depends on the node (a runner of
    ``gpus_per_replica`` takes the GPUs of the node that its model's others there leave)."""


@dataclass(frozen=True)
class Start:
    node: str
    layers: int | None = None
    """The GPU layers chosen for ``gpu_layers = "auto"``."""


@dataclass(frozen=True)
class Evict:
    victims: tuple[str, ...]
    """Holders' keys."""
    short: frozenset[str]
    """The devices it is short of (a cap counts as a device)."""
    reason: EvictionReason
    node: str


@dataclass(frozen=True)
class Wait:
    until: float | None = None
    """When a decision may change with nothing else happening (a runner reaching its
    ``min_residency``); ``None``: when memory is freed or a runner idles."""


Decision = Start | Evict | Wait

_MAX_LAYERS = 1024
"""More layers than any model has (``layers`` is searched below it)."""


def plan(snapshot: Snapshot, need: Need, now: float) -> Decision:
    """Where ``need`` starts, or whom to evict for it, or that it waits.

    1. On each node it may go to (of ``need.nodes``, when it names some), it takes
       ``need.footprint`` (for ``gpu_layers = "auto"``, the most layers whose GPU part fits
       the node's GPUs free soon, or free now when it may not evict) plus its cap units.
    2. Nodes where that fits in the memory free now: start on one outside ``spread``, of
       those where the most layers go to a GPU, with the most room left on its tightest
       device.
    3. It may not evict: wait.
    4. It fits somewhere once runners already stopping are gone: wait for them.
    5. Per node, the policy chooses idle victims among the node's runners (and, for the
       caps, runners elsewhere freeing only their units); evict on the node that needs the
       fewest victims, then the fewest bytes, outside ``spread`` first.
    6. No node can make room: wait, until the first runner that ``min_residency`` protects
       is old enough to go.
    """
    if need.node is not None:
        nodes = [need.node]
    else:
        nodes = sorted(n for n in snapshot.budgets if not need.nodes or n in need.nodes)
    caps_now, caps_soon = _caps(snapshot)
    free_now: dict[str, dict[str, int]] = {}
    free_soon: dict[str, dict[str, int]] = {}
    wants: dict[str, tuple[Footprint, int | None]] = {}
    for node in nodes:
        budget = snapshot.budgets.get(node, {})
        held = total(h.held for h in snapshot.holders if h.node == node)
        freeing = total(h.freeing for h in snapshot.holders if h.node == node)
        now_free = {d: n - held.get(d, 0) for d, n in budget.items()}
        soon_free = {d: n + freeing.get(d, 0) for d, n in now_free.items()}
        free_now[node] = now_free | caps_now
        free_soon[node] = soon_free | caps_soon
        footprint, layers = need.on(node) if need.on else need.footprint, None
        if need.layers is not None:
            layers = fit_layers(need.layers, soon_free if need.evict else now_free)
            footprint = need.layers(layers)
        wants[node] = ({**footprint, **need.units}, layers)

    room = [n for n in nodes if fits(wants[n][0], free_now[n])]
    if room:

        def left(node: str) -> tuple[bool, int, int, str]:
            want, layers = wants[node]
            free = free_now[node]
            tightest = min((free[d] - a for d, a in want.items() if a > 0), default=0)
            on_gpu = _MAX_LAYERS + 1 if layers == -1 else layers or 0
            return node in need.spread, -on_gpu, -tightest, node

        best = min(room, key=left)
        return Start(best, wants[best][1])
    if not need.evict or any(fits(wants[n][0], free_soon[n]) for n in nodes):
        return Wait()

    holding = {h.key: h.held for h in snapshot.holders}
    options = []
    for node in nodes:
        want = wants[node][0]
        victims = choose_victims(
            want, free_soon[node], _candidates(snapshot, node), now, snapshot.min_residency
        )
        if victims:
            freed = sum(sum(holding[v].values()) for v in victims)
            options.append((node in need.spread, len(victims), freed, node, victims))
    if options:
        *_, node, victims = min(options)
        want, soon = wants[node][0], free_soon[node]
        short = frozenset(d for d, n in want.items() if n > soon.get(d, 0))
        reason: EvictionReason = "max_loaded" if short <= snapshot.caps.keys() else "memory"
        return Evict(tuple(victims), short, reason, node)
    return Wait(_residency_ends(snapshot, now))


@dataclass(frozen=True)
class Relief:
    """Runners to evict because those resident use more than a node's budget."""

    over: Mapping[str, Footprint]
    """Per node, by how much, on the devices over it."""
    victims: tuple[str, ...]


def relieve(snapshot: Snapshot, now: float) -> Relief | None:
    """Whom to evict when resident runners use more than their node's budget (an engine grew
    past its estimate): per node over it, as much as the policy finds to cover the excess,
    else every idle runner there (even if that is not enough: the rest waits); ``None`` when
    every node is within its budget."""
    over: dict[str, Footprint] = {}
    victims: list[str] = []
    for node, budget in sorted(snapshot.budgets.items()):
        held = total(h.held for h in snapshot.holders if h.node == node)
        excess = {d: n - budget.get(d, 0) for d, n in held.items() if n > budget.get(d, 0)}
        if not excess:
            continue
        over[node] = excess
        loaded = _candidates(snapshot, node, caps=False)
        victims += choose_victims(excess, {}, loaded, now) or [
            c.name for c in loaded if not c.busy and not c.pinned
        ]
    return Relief(over, tuple(victims)) if over else None


def fit_layers(footprint: Callable[[int], Footprint], free: Footprint) -> int:
    """The most GPU layers whose GPU part of ``footprint`` fits ``free`` (``-1``: all of them;
    ``0``, the CPU, when none fits)."""

    def gpu_fits(layers: int) -> bool:
        need = footprint(layers)
        return fits({d: n for d, n in need.items() if d != "ram"}, free)

    if gpu_fits(-1):
        return -1
    low, high = 0, _MAX_LAYERS  # gpu_fits(low) holds; past a model's layers all are on it
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if gpu_fits(middle) else (low, middle)
    return low


def _caps(snapshot: Snapshot) -> tuple[dict[str, int], dict[str, int]]:
    """The units of each cap free now, and once the models stopping all their runners are
    gone."""
    models: dict[str, list[Holder]] = {}
    for h in snapshot.holders:
        models.setdefault(h.model, []).append(h)
    now, soon = {}, {}
    for cap, limit in snapshot.caps.items():
        holding = [hs for hs in models.values() if hs[0].units.get(cap, 0)]
        going = sum(all(h.stopping for h in hs) for hs in holding)
        now[cap], soon[cap] = limit - len(holding), limit - len(holding) + going
    return now, soon


def _candidates(snapshot: Snapshot, node: str, *, caps: bool = True) -> list[Loaded]:
    """The runners the policy may evict for room on ``node``: its own with what they hold,
    and (``caps``) a model's last resident runner anywhere with its cap units, which evicting
    it frees."""
    resident: dict[str, int] = {}
    for h in snapshot.holders:
        resident[h.model] = resident.get(h.model, 0) + 1
    loaded = []
    for h in snapshot.holders:
        if not h.evictable:
            continue
        footprint = dict(h.held) if h.node == node else {}
        if caps and resident[h.model] == 1:
            footprint.update({c: n for c, n in h.units.items() if c in snapshot.caps})
        if h.node != node and not footprint:
            continue
        loaded.append(
            Loaded(h.key, footprint, h.busy, h.pinned, h.expires_at, h.last_used, h.loaded_at)
        )
    return loaded


def _residency_ends(snapshot: Snapshot, now: float) -> float | None:
    """When the first idle runner that ``min_residency`` keeps may be evicted."""
    young = [
        h.loaded_at + snapshot.min_residency
        for h in snapshot.holders
        if h.evictable
        and not h.busy
        and not h.pinned
        and now - h.loaded_at < snapshot.min_residency
    ]
    return min(young, default=None)


def total(footprints: Iterable[Footprint]) -> dict[str, int]:
    """Per device, what ``footprints`` hold together."""
    result: dict[str, int] = {}
    for footprint in footprints:
        for device, amount in footprint.items():
            result[device] = result.get(device, 0) + amount
    return result
