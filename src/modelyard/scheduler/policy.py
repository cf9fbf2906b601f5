"""The eviction choice, as a pure function of the target's need and what is loaded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelyard.catalog.spec import Footprint


@dataclass(frozen=True)
class Loaded:
    """A resident model as the policy sees it."""

    name: str
    footprint: Footprint
    busy: bool
    """Holds leases or has requests waiting for it."""
    pinned: bool
    expires_at: float | None
    """When its keep-alive runs out; ``None`` means never."""
    last_used: float
    loaded_at: float


def fits(need: Footprint, free: Footprint) -> bool:
    return all(amount <= free.get(device, 0) for device, amount in need.items() if amount > 0)


def choose_victims(
    need: Footprint,
    free: Footprint,
    loaded: Sequence[Loaded],
    now: float,
    min_residency: float = 0.0,
) -> list[str] | None:
    """Which models to unload so that ``need`` fits; ``[]`` if it fits already, ``None`` to wait.

    1. If ``need`` fits in ``free`` on every device, evict nothing.
    2. Candidates are idle models only: never busy, never pinned, and never one loaded less
       than ``min_residency`` ago (so two models competing for memory do not ping-pong).
    3. Candidates go in order of nearest keep-alive expiry (never-expiring last), then least
       recently used.
    4. Take candidates in that order, skipping those that free nothing on a short device,
       until ``need`` fits. If all of them together are not enough, evict nobody: wait.
    """
    if fits(need, free):
        return []
    candidates = [
        m for m in loaded if not m.busy and not m.pinned and now - m.loaded_at >= min_residency
    ]
    candidates.sort(key=lambda m: (m.expires_at is None, m.expires_at or 0.0, m.last_used, m.name))
    available = dict(free)
    victims: list[str] = []
    for model in candidates:
        short = {d for d, amount in need.items() if amount > available.get(d, 0)}
        if not short:
            break
        if not any(model.footprint.get(d, 0) > 0 for d in short):
            continue
        victims.append(model.name)
        for device, amount in model.footprint.items():
            available[device] = available.get(device, 0) + amount
    return victims if fits(need, available) else None
