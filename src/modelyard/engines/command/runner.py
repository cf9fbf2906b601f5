"""Any program that serves an OpenAI-compatible API as a model's runner: vLLM, SGLang, TEI,
Infinity, a llama-server build of one's own, another modelyard.

The catalog entry gives the command line with placeholders, filled in at each start:

- ``{port}``: a free port, and ``{host}``: ``127.0.0.1`` (on a cluster's node, its
  address), where the server must listen;
- ``{path}``: the entry's ``path`` (a file or directory, resolved against the config file
  when it exists there; else as written, such as a hub id), ``{name}``: the model's name,
  ``{ctx}``: its context;
- ``{gpu}``: the entry's ``gpus`` (``0,1``), also its ``CUDA_VISIBLE_DEVICES``;
- ``{key}``: a random key for this run. When the command uses it (vLLM's ``--api-key
  {key}``), the gateway sends it with every request, so only the gateway can use the model.

The process lives like every runner (``runners.process``): its own process group, its output
in the model's rotating log, gone when the gateway dies. It is ready when ``health`` answers
``health_status``; it is asked to stop with ``stop_signal``, then killed after
``stop_timeout``. Its memory is what the entry declares (``memory``) until it has run once;
from then on what it was measured to use (its process tree's RSS).
"""

from __future__ import annotations

from pathlib import Path

from modelyard.catalog.spec import Footprint, ModelSpec
from modelyard.engines.command.table import placeholders, stop_signal
from modelyard.errors import LoadFailedError
from modelyard.logbook import DEFAULT_ROTATION, Rotation, log_path
from modelyard.runners.gpu import Gpus, NoGpus, device, visible
from modelyard.runners.process import ChildServer, Lifecycle, free_port, runner_host, runner_key


class CommandRunner:
    """Starts a model's own command; logs go to ``<log_dir>/<model>.log``."""

    def __init__(
        self, log_dir: Path, rotation: Rotation = DEFAULT_ROTATION, gpus: Gpus | None = None
    ) -> None:
        self._log_dir = log_dir
        self._rotation = rotation
        self._gpus = gpus or NoGpus()

    def estimate(self, spec: ModelSpec) -> Footprint:
        # Nothing to read a size from: the entry's ``memory`` and ``gpu_memory`` (the ledger
        # prefers them, and a measurement once the model has run); unknown is 0, and the
        # first load measures.
        footprint = {"ram": spec.memory or 0}
        for index in spec.gpus:
            footprint[device(index)] = spec.gpu_memory or 0
        return footprint

    async def start(self, spec: ModelSpec) -> ChildServer:
        port = free_port()
        key = runner_key()
        values = {
            "port": str(port),
            "host": runner_host(),
            "path": str(spec.path),
            "name": spec.name,
            "ctx": str(spec.ctx),
            "key": key,
            "gpu": ",".join(str(i) for i in spec.gpus),
        }
        try:
            argv = [part.format_map(values) for part in spec.command]
        except (KeyError, ValueError, IndexError) as exc:
            raise LoadFailedError(f"command of {spec.name!r}: bad placeholder {exc}") from None
        uses_key = "key" in placeholders(spec.command)
        lifecycle = Lifecycle(
            health=spec.health,
            health_status=spec.health_status,
            stop_signal=stop_signal(spec.stop_signal),
            stop_timeout=spec.stop_timeout,
        )
        return await ChildServer.start(
            argv,
            port=port,
            log_path=log_path(self._log_dir, spec.runner_name),
            rotation=self._rotation,
            load_timeout=spec.ready_timeout,
            env={
                **(visible(spec.gpus) if spec.gpus else {}),
                # vLLM serves /sleep and /wake_up only in its development mode.
                **({"VLLM_SERVER_DEV_MODE": "1"} if spec.sleep_level else {}),
                **spec.env,
            },
            key=key if uses_key else None,
            lifeline=True,
            lifecycle=lifecycle,
            gpus=self._gpus,
        )
