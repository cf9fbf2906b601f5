"""GPUs as NVML reports them: each device's memory (the budget has one entry per GPU,
``gpu0``, ``gpu1``…) and the memory each process holds on them (a runner's measured
footprint).

``nvidia-ml-py`` is optional: without it, or without an NVIDIA driver, there are no GPUs and
every model is budgeted in RAM alone. NVML numbers devices as the machine does, whatever
``CUDA_VISIBLE_DEVICES`` says; a model's ``gpus`` are those numbers, and its runner is
started with ``CUDA_VISIBLE_DEVICES`` set to them. Tests give the scheduler and the runners a
fake with the same two methods.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total: int
    """Bytes of memory."""
    used: int
    utilization: int | None = None
    """Percent of the last sample period the GPU was busy."""


def device(index: int) -> str:
    """The budget's name for GPU ``index``."""
    return f"gpu{index}"


def visible(indices: Collection[int]) -> dict[str, str]:
    """The environment that shows a runner ``indices`` (NVML's numbers) and no other GPU."""
    # PCI order: CUDA then numbers the GPUs as NVML (and the budget) does.
    return {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in indices),
    }


class Gpus(Protocol):
    def devices(self) -> list[Gpu]: ...

    def used_by(self, pids: Collection[int]) -> dict[int, int]:
        """Bytes held by ``pids`` on each GPU (by index) that they use."""
        ...


class NoGpus:
    """A machine without NVIDIA GPUs (or without NVML)."""

    def devices(self) -> list[Gpu]:
        return []

    def used_by(self, pids: Collection[int]) -> dict[int, int]:
        return {}


class Nvml:
    """The machine's GPUs through ``pynvml`` (initialised once, for the process's life)."""

    def __init__(self) -> None:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        self._nvml: Any = pynvml

    def _handles(self) -> list[Any]:
        nvml = self._nvml
        return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]

    def devices(self) -> list[Gpu]:
        nvml = self._nvml
        found = []
        for index, handle in enumerate(self._handles()):
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            name = nvml.nvmlDeviceGetName(handle)
            try:
                busy: int | None = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except nvml.NVMLError:
                busy = None
            found.append(
                Gpu(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    total=int(memory.total),
                    used=int(memory.used),
                    utilization=busy,
                )
            )
        return found

    def used_by(self, pids: Collection[int]) -> dict[int, int]:
        nvml = self._nvml
        wanted = set(pids)
        held: dict[int, int] = {}
        for index, handle in enumerate(self._handles()):
            for query in (
                nvml.nvmlDeviceGetComputeRunningProcesses,
                nvml.nvmlDeviceGetGraphicsRunningProcesses,
            ):
                try:
                    processes = query(handle)
                except nvml.NVMLError:
                    continue
                for process in processes:
                    amount = process.usedGpuMemory  # None where the driver does not say
                    if process.pid in wanted and amount:
                        held[index] = held.get(index, 0) + int(amount)
        return held


def detect() -> Gpus:
    """NVML when it is installed and finds a driver; else no GPUs."""
    try:
        return Nvml()
    except Exception as exc:  # no package, no driver, no device: all mean "no GPUs"
        log.debug("no GPUs: %s", exc)
        return NoGpus()
