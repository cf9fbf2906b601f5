"""The scheduler's models, one per catalog entry, as the catalog changes while serving.

A model new to the catalog is made (a ``Replica`` per runner its spec allows); one whose
settings changed takes them at once when stopped, else at its next stop (``pending``); one
removed takes no new requests, finishes those it has (queued included), unloads and is
forgotten. The scheduler decides what follows (``_pump``); the roster keeps the models.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from modelyard.catalog.catalog import Catalog, CatalogChange
from modelyard.catalog.spec import ModelSpec
from modelyard.clock import Clock
from modelyard.errors import ModelNotFoundError
from modelyard.scheduler.fleet import Fleet
from modelyard.scheduler.model import Model
from modelyard.scheduler.replica import Replica, Report
from modelyard.scheduler.state import ModelState

OnReport = Callable[[Model, Replica, Report], None]


class Roster:
    def __init__(
        self,
        models: dict[str, Model],
        fleet: Fleet,
        clock: Clock,
        stop_grace: float,
        on_report: OnReport,
    ) -> None:
        self._models = models
        self._fleet = fleet
        self._clock = clock
        self._stop_grace = stop_grace
        self._on_report = on_report

    def add(self, spec: ModelSpec) -> Model:
        m = self._models[spec.name] = Model(spec)
        self._size(m)
        return m

    def swap(self, catalog: Catalog) -> CatalogChange:
        """Takes ``catalog``'s entries: what it added, removed and changed."""
        added, removed, changed = [], [], []
        for spec in catalog:
            m = self._models.get(spec.name)
            if m is None:
                self.add(spec)
                added.append(spec.name)
                continue
            if m.removed:
                m.removed = False
                for r in m.replicas:
                    r.unload_when_idle = None
            if spec == (m.pending or m.spec):
                continue
            changed.append(spec.name)
            if spec == m.spec:
                m.pending = None  # changed back before it took effect
            elif m.stopped:
                self.respec(m, spec)
            else:
                m.pending = spec
        names = {spec.name for spec in catalog}
        for name, m in list(self._models.items()):
            if name not in names and not m.removed:
                removed.append(name)
                self._retire(m)
        return CatalogChange(added, removed, changed)

    def stopped(self, m: Model) -> None:
        """``m``'s last runner stopped: it is forgotten if removed, else takes the settings
        that waited for it to stop."""
        if m.removed:
            self._forget(m)
        elif m.pending is not None:
            self.respec(m, m.pending)

    def respec(self, m: Model, spec: ModelSpec) -> None:
        m.spec = spec
        m.pending = None
        m.failures = 0
        m.retry_at = 0.0
        self._size(m)

    def _retire(self, m: Model) -> None:
        """``m`` left the catalog: unload it once its requests are done, then forget it."""
        m.removed = True
        m.pending = None
        for r in m.replicas:
            if self._fleet.stoppable(m, r):
                self._fleet.unload(m, r, "reload", "removed from the catalog")
            elif r.live or r.state is ModelState.SLEEPING:
                r.unload_when_idle = ("reload", "removed from the catalog")
        if m.stopped:
            self._forget(m)

    def _forget(self, m: Model) -> None:
        error = ModelNotFoundError(
            f"The model {m.spec.name!r} was removed from the catalog", param="model"
        )
        for waiter in list(m.waiters):
            m.fail(waiter, error)
        for r in m.replicas:
            r.disarm()
        if self._models.get(m.spec.name) is m:
            del self._models[m.spec.name]

    def _size(self, m: Model) -> None:
        """One replica per runner the spec allows (called while none runs)."""
        if len(m.replicas) != m.spec.max_replicas:
            report = functools.partial(self._on_report, m)
            m.replicas = [
                Replica(m.spec.name, i, self._clock, report, self._stop_grace)
                for i in range(m.spec.max_replicas)
            ]
