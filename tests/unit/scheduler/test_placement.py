"""Placement as a table: snapshots of several nodes (sizes, GPUs, runners stopping or asleep,
caps) in, a decision out; no loop, no clock, no runner."""

from __future__ import annotations

from dataclasses import replace

import pytest

from modelyard.catalog.spec import Footprint
from modelyard.scheduler.placement import (
    Decision,
    Evict,
    Holder,
    Need,
    Snapshot,
    Start,
    Wait,
    fit_layers,
    plan,
    relieve,
)

NOW = 1000.0
GiB = 1 << 30

BIG = {"ram": 64 * GiB, "gpu0": 24 * GiB}
SMALL = {"ram": 16 * GiB}
TWO = {"big": BIG, "small": SMALL}


def held(key: str, node: str, ram: int = 0, gpu: int = 0, **kw: object) -> Holder:
    """A runner of model ``key`` (before any ``@``) holding ``ram``/``gpu`` GiB on ``node``;
    idle, unpinned, loaded long ago, its keep-alive running out at 2000."""
    footprint = {"ram": ram * GiB} | ({"gpu0": gpu * GiB} if gpu else {})
    base = Holder(key, key.partition("@")[0], node, footprint, expires_at=2000.0)
    return replace(base, **kw)  # type: ignore[arg-type]


def need(ram: int = 0, gpu: int = 0, **kw: object) -> Need:
    footprint = {"ram": ram * GiB} | ({"gpu0": gpu * GiB} if gpu else {})
    return replace(Need("new", footprint), **kw)  # type: ignore[arg-type]


def by_layers(layer: int, ram: int = 2, whole: int = 32) -> Footprint:
    """A 32-layer model of 1 GiB per layer: ``layer`` of them on the GPU, the rest in RAM."""
    on_gpu = whole if layer == -1 else min(layer, whole)
    return {"ram": (ram + whole - on_gpu) * GiB, "gpu0": on_gpu * GiB}


CASES: list[tuple[str, Snapshot, Need, Decision]] = [
    ("fits on the only node", Snapshot({"local": SMALL}, []), need(8), Start("local")),
    ("fits only on the big node", Snapshot(TWO, []), need(20), Start("big")),
    (
        "a GPU model goes where the GPU is",
        Snapshot(TWO, []),
        need(1, 8),
        Start("big"),
    ),
    (
        "of two that fit, the one left with more room",
        Snapshot(TWO, [held("a", "big", ram=60)]),
        need(2),
        Start("small"),
    ),
    (
        "a model's second runner goes to another node",
        Snapshot(TWO, [held("new", "big", ram=2)]),
        need(2, spread=frozenset({"big"})),
        Start("small"),
    ),
    (
        "spread yields when nowhere else has room",
        Snapshot(TWO, [held("new", "big", ram=2)]),
        need(20, spread=frozenset({"big"})),
        Start("big"),
    ),
    (
        "waits for a runner stopping on the node that will have room",
        Snapshot(TWO, [held("a", "big", ram=60, freeing={"ram": 60 * GiB}, stopping=True)]),
        need(20),
        Wait(),
    ),
    (
        "waits for the GPU a runner going to sleep gives back",
        Snapshot(TWO, [held("a", "big", ram=4, gpu=20, freeing={"gpu0": 20 * GiB})]),
        need(1, 8),
        Wait(),
    ),
    (
        "evicts on the node that needs the fewest victims, and only there",
        Snapshot(
            TWO,
            [
                held("a", "big", ram=30),
                held("b", "big", ram=30, expires_at=1100.0),
                held("c", "small", ram=15, expires_at=1050.0),
            ],
        ),
        need(10),
        Evict(("c",), frozenset({"ram"}), "memory", "small"),
    ),
    (
        "evicts by the policy's order on the node it chose",
        Snapshot(
            {"big": BIG},
            [held("late", "big", ram=40), held("soon", "big", ram=20, expires_at=1100.0)],
        ),
        need(30),
        Evict(("soon", "late"), frozenset({"ram"}), "memory", "big"),
    ),
    (
        "busy and pinned runners are never victims: wait",
        Snapshot(
            {"local": SMALL},
            [held("a", "local", ram=8, busy=True), held("b", "local", ram=8, pinned=True)],
        ),
        need(4),
        Wait(),
    ),
    (
        "a loading runner is never a victim",
        Snapshot({"local": SMALL}, [held("a", "local", ram=16, evictable=False)]),
        need(4),
        Wait(),
    ),
    (
        "a young runner is kept until min_residency, and the wait says until when",
        Snapshot(
            {"local": SMALL}, [held("a", "local", ram=16, loaded_at=990.0)], min_residency=30.0
        ),
        need(4),
        Wait(1020.0),
    ),
    (
        "a sleeping runner wakes where it sleeps, taking only what it lacks",
        Snapshot(TWO, [held("new", "big", ram=4)]),
        need(0, 20, node="big"),
        Start("big"),
    ),
    (
        "waking evicts on its own node, never elsewhere",
        Snapshot(
            TWO,
            [held("new", "big", ram=4), held("g", "big", gpu=20), held("x", "small", ram=10)],
        ),
        need(0, 20, node="big"),
        Evict(("g",), frozenset({"gpu0"}), "memory", "big"),
    ),
    (
        "a scale-up starts in free memory or not at all",
        Snapshot({"local": SMALL}, [held("a", "local", ram=12)]),
        need(8, evict=False),
        Wait(),
    ),
    (
        "the cap on loaded models evicts a model on another node",
        Snapshot(TWO, [held("a", "small", ram=2, units={"models": 1})], caps={"models": 1}),
        replace(need(2), units={"models": 1}),
        Evict(("a",), frozenset({"models"}), "max_loaded", "big"),
    ),
    (
        "a model's runners take one unit of a cap together",
        Snapshot(
            TWO,
            [
                held("a", "small", ram=2, units={"models": 1}),
                held("a@1", "big", ram=2, units={"models": 1}),
            ],
            caps={"models": 2},
        ),
        replace(need(2), units={"models": 1}),
        Start("big"),
    ),
    (
        "a cap's unit is freed soon by a model stopping all its runners",
        Snapshot(
            {"local": SMALL},
            [held("a", "local", ram=2, stopping=True, evictable=False, units={"models": 1})],
            caps={"models": 1},
        ),
        replace(need(2), units={"models": 1}),
        Wait(),
    ),
    (
        "auto layers: the node whose GPU takes them all",
        Snapshot({"cpu": {"ram": 64 * GiB}, "gpu": {"ram": 8 * GiB, "gpu0": 40 * GiB}}, []),
        need(layers=by_layers),
        Start("gpu", -1),
    ),
    (
        "auto layers: as many as fit beside what the GPU holds",
        Snapshot({"local": BIG}, [held("a", "local", gpu=14)]),
        need(layers=by_layers),
        Start("local", 10),
    ),
]


@pytest.mark.parametrize(
    ("snapshot", "wanted", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_placement_plan(snapshot: Snapshot, wanted: Need, expected: Decision) -> None:
    assert plan(snapshot, wanted, NOW) == expected


def test_placement_relieve_evicts_on_the_node_over_its_budget_only() -> None:
    snapshot = Snapshot(
        TWO,
        [
            held("grown", "small", ram=12, busy=True),
            held("idle", "small", ram=6),
            held("other", "big", ram=6),
        ],
    )
    relief = relieve(snapshot, NOW)
    assert relief is not None
    assert relief.over == {"small": {"ram": 2 * GiB}}
    assert relief.victims == ("idle",)


def test_placement_relieve_is_none_within_budgets() -> None:
    assert relieve(Snapshot(TWO, [held("a", "small", ram=16)]), NOW) is None


def test_placement_relieve_evicts_what_it_can_when_not_enough() -> None:
    snapshot = Snapshot(
        {"local": SMALL},
        [held("busy", "local", ram=20, busy=True), held("idle", "local", ram=1)],
    )
    relief = relieve(snapshot, NOW)
    assert relief is not None
    assert relief.victims == ("idle",)


@pytest.mark.parametrize(("gpu", "layers"), [(40, -1), (32, -1), (31, 31), (10, 10), (0, 0)])
def test_placement_fit_layers(gpu: int, layers: int) -> None:
    assert fit_layers(by_layers, {"ram": 64 * GiB, "gpu0": gpu * GiB}) == layers
