"""The memory budget per device, the ledger that accounts for it, and measured footprints
remembered across restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from pathlib import Path

import psutil

from modelyard.catalog.spec import Footprint, ModelSpec
from modelyard.errors import DoesNotFitError, ModelyardError
from modelyard.quantity import format_size, parse_size
from modelyard.runners.base import Runner
from modelyard.runners.gpu import Gpus, NoGpus
from modelyard.runners.gpu import device as gpu_name
from modelyard.scheduler.placement import LOCAL
from modelyard.scheduler.policy import fits

log = logging.getLogger(__name__)


def resolve_budget(
    ram: str | int, gpu: str | int = "90%", gpus: Gpus | None = None
) -> dict[str, int]:
    """Bytes per device: ``ram`` (a percentage is of the RAM available now, not of the
    total), and ``gpu`` of each GPU ``gpus`` finds (a percentage is of its whole memory:
    what other programs hold there is measured, not guessed)."""
    budget = {"ram": parse_size(ram, total=psutil.virtual_memory().available)}
    for found in (gpus or NoGpus()).devices():
        budget[gpu_name(found.index)] = parse_size(gpu, total=found.total)
    return budget


class MeasuredFootprints(MutableMapping[str, Footprint]):
    """A dict of measured footprints by model+settings key, saved as JSON by ``flush`` (the
    scheduler flushes from a thread after it measures, and when it closes)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._dirty = False
        self._data: dict[str, Footprint] = {}
        with contextlib.suppress(FileNotFoundError):
            try:
                raw = json.loads(path.read_text())
                self._data = {
                    str(k): {str(d): int(n) for d, n in v.items()} for k, v in raw.items()
                }
            except (ValueError, AttributeError, TypeError) as exc:
                log.warning("ignoring unreadable %s: %s", path, exc)

    def __getitem__(self, key: str) -> Footprint:
        return self._data[key]

    def __setitem__(self, key: str, value: Footprint) -> None:
        if self._data.get(key) == value:
            return
        self._data[key] = dict(value)
        self._dirty = True

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        self._dirty = True

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def flush(self) -> None:
        """Writes the file if anything changed since the last write."""
        if not self._dirty:
            return
        self._dirty = False
        text = json.dumps(dict(self._data), indent=1, sort_keys=True)
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._path.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, self._path)
        except OSError as exc:
            log.warning("cannot save %s: %s", self._path, exc)


def _estimate_key(spec: ModelSpec) -> str:
    return f"{spec.settings_key}:{spec.memory}:{spec.gpu_memory}"


def estimate(spec: ModelSpec, runner: Runner) -> Footprint:
    """What loading ``spec`` will take: its configured ``memory`` (and ``gpu_memory`` on each
    of its GPUs), else the runner's estimate, with ``gpu_memory`` in place of its GPU part."""
    declared = {gpu_name(i): spec.gpu_memory for i in spec.gpus} if spec.gpu_memory else {}
    if spec.memory is not None:
        return {"ram": spec.memory, **declared}
    found = runner.estimate(spec)
    if declared:
        found = {d: n for d, n in found.items() if not d.startswith("gpu")} | declared
    return found


class MemoryLedger:
    """The one account of memory: the budget per device, what each model will take (its
    estimate, asked once per settings, ahead of need in a thread), the most each has used
    (measured peaks, remembered across restarts) and what a set of models holds.

    Keyed by device (``ram``, ``gpu0``); a cluster has a budget per node (``budgets``).
    """

    def __init__(
        self,
        budget: Footprint,
        runners: Mapping[str, Runner],
        measured: MutableMapping[str, Footprint] | None = None,
    ) -> None:
        self.budget: dict[str, int] = dict(budget)
        """This machine's (the node ``local``)."""
        self.nodes: dict[str, dict[str, int]] = {}
        """The other nodes' of a cluster, by node."""
        self._runners = runners
        self._measured: MutableMapping[str, Footprint] = measured if measured is not None else {}
        self._estimates: dict[str, Footprint] = {}
        self._reading: dict[str, asyncio.Task[None]] = {}
        self._failed: dict[str, Exception] = {}

    async def prepare(self, specs: Iterable[ModelSpec]) -> None:
        """Computes the estimates of ``specs`` not known yet, in a thread, so that reading
        model headers never blocks the event loop when a request comes."""
        missing = [spec for spec in specs if _estimate_key(spec) not in self._estimates]
        if not missing:
            return

        def compute() -> dict[str, Footprint]:
            done = {}
            for spec in missing:
                with contextlib.suppress(ModelyardError, OSError, KeyError):
                    done[_estimate_key(spec)] = estimate(spec, self._runners[spec.engine])
            return done

        self._estimates.update(await asyncio.to_thread(compute))

    def known(self, spec: ModelSpec) -> bool:
        """Its estimate is at hand without reading a file on the loop: read already, or its
        runner's estimate reads no file (``Runner.reads_files``)."""
        key = _estimate_key(spec)
        reads = getattr(self._runners[spec.engine], "reads_files", False)
        return key in self._estimates or key in self._failed or not reads

    async def ready(self, specs: Iterable[ModelSpec]) -> None:
        """Reads the estimates of ``specs`` that are not ``known`` yet, each in a thread of
        its own that callers asking for the same one share (they go on in the order they
        asked); a caller that is cancelled leaves the reading to finish for the others."""
        for spec in specs:
            if self.known(spec):
                continue
            key = _estimate_key(spec)
            task = self._reading.get(key)
            if task is None:
                task = asyncio.create_task(self._read(key, spec), name=f"estimate {spec.name}")
                self._reading[key] = task
            await asyncio.shield(task)

    async def _read(self, key: str, spec: ModelSpec) -> None:
        try:
            found = await asyncio.to_thread(estimate, spec, self._runners[spec.engine])
        except (ModelyardError, OSError, KeyError) as exc:
            self._failed[key] = exc  # raised once by ``estimate``, then read again
        else:
            self._estimates[key] = found
        finally:
            del self._reading[key]

    def estimate(self, spec: ModelSpec) -> Footprint:
        """``estimate`` of ``spec`` (``LoadFailedError`` if its files cannot say); read on the
        loop only for a model neither ``prepare`` nor ``ready`` has seen."""
        key = _estimate_key(spec)
        if key in self._failed:
            raise self._failed.pop(key)
        if key not in self._estimates:
            self._estimates[key] = estimate(spec, self._runners[spec.engine])
        return self._estimates[key]

    def estimate_or_empty(self, spec: ModelSpec) -> Footprint:
        """``estimate``, ``{}`` when its files cannot say or it is not ``known`` yet (a query
        never reads a model's header)."""
        if not self.known(spec):
            return {}
        try:
            return self.estimate(spec)
        except ModelyardError:
            return {}

    def measured(self, spec: ModelSpec) -> Footprint | None:
        """The most the model has been seen to use with these settings."""
        return self._measured.get(spec.settings_key)

    def record(self, spec: ModelSpec, footprint: Footprint) -> Footprint | None:
        """Remembers the most the model has used (memory it reached once, it can reach
        again: an encoder's activations, pages of weights touched late, an engine's caches);
        the peak, or ``None`` for an empty sample."""
        if not any(footprint.values()):
            return None
        peak = dict(self._measured.get(spec.settings_key) or {})
        for device, amount in footprint.items():
            peak[device] = max(peak.get(device, 0), amount)
        self._measured[spec.settings_key] = peak
        return peak

    def footprint(self, spec: ModelSpec) -> Footprint:
        """What a model counts for: the override, else the measured peak, else the estimate."""
        if spec.memory is not None:
            return self.estimate(spec)
        return self._measured.get(spec.settings_key) or self.estimate(spec)

    @property
    def budgets(self) -> dict[str, dict[str, int]]:
        """Per node, bytes per device: this machine's (``local``) and a cluster's others."""
        return {LOCAL: self.budget, **self.nodes}

    def free(self, held: Footprint) -> dict[str, int]:
        """The budget left per device once ``held`` is taken."""
        return {d: self.budget.get(d, 0) - held.get(d, 0) for d in self.budget}

    def over(self, held: Footprint) -> dict[str, int]:
        """By how much ``held`` exceeds the budget, on the devices where it does."""
        return {d: n - self.budget.get(d, 0) for d, n in held.items() if n > self.budget.get(d, 0)}

    def check_fits(self, spec: ModelSpec) -> None:
        """``DoesNotFitError`` (507) for a model larger than the whole budget of every node
        it may go to."""
        need = self.footprint(spec)
        allowed = {n: b for n, b in self.budgets.items() if not spec.nodes or n in spec.nodes}
        if not allowed:
            return  # none of its nodes is in the cluster now: it waits for one to join
        if any(fits(need, budget) for budget in allowed.values()):
            return
        node, budget = (LOCAL, self.budget) if LOCAL in allowed else next(iter(allowed.items()))
        parts = ", ".join(
            f"{format_size(n)} of {d} (budget {format_size(budget.get(d, 0))})"
            for d, n in need.items()
            if n > budget.get(d, 0)
        )
        others = len(allowed) - 1
        where = ""  # one machine: no node to name
        if self.nodes:
            where = f" on {node}" + (f" nor on the {others} other node(s)" if others else "")
        raise DoesNotFitError(
            f"Model {spec.name!r} needs {parts}{where}: it cannot be loaded even with every "
            "other model unloaded. Lower its ctx or parallel, or raise the memory budget."
        )

    def flush(self) -> None:
        """Saves the measured peaks (from a thread: it writes a file)."""
        flush = getattr(self._measured, "flush", None)
        if flush is not None:
            flush()
