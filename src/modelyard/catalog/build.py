"""The catalog from a config file's model tables, discovered files and the demo models.

``entry_spec`` turns one validated ``[models.NAME]`` table into a ``ModelSpec`` (resolving
paths against the config file, reading a model directory's kind, checking llama-server
flags); ``merge`` puts explicit entries before discovered models, and ``check_names`` refuses
a name or alias that two models claim. Every problem is a ``ConfigError`` naming the file,
the table and the key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from modelyard.catalog import flags
from modelyard.catalog.command import PLACEHOLDERS, placeholders, stop_signal
from modelyard.catalog.discovery import shard_set
from modelyard.catalog.hf import is_hf_dir, read_hf_dir
from modelyard.catalog.spec import ModelKind, ModelSpec, default_parallel
from modelyard.errors import ConfigError

if TYPE_CHECKING:
    from modelyard.config import ModelEntry


_AS_GIVEN = (
    "ctx",
    "threads",
    "gpu_layers",
    "pinned",
    "preload",
    "max_queue",
    "queue_timeout",
    "memory",
    "prompt_cache",
    "backend",
    "max_batch",
    "batch_wait",
    "max_batch_tokens",
    "truncate",
    "matryoshka",
    "health",
    "health_status",
    "ready_timeout",
    "stop_signal",
    "stop_timeout",
    "upstream_model",
    "price",
    "gpu_memory",
    "replicas",
    "scale_up_wait",
    "gpus_per_replica",
)
"""Entry fields that reach the spec as they are (validated and parsed by the schema)."""


def resolve(value: str, base_dir: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


def entry_spec(
    name: str,
    entry: ModelEntry,
    base_dir: Path,
    origin: str,
    keep_alive: float | None,
    llama_server: str | None,
) -> ModelSpec:
    """A ``[models.NAME]`` table, validated, resolved against the files it names."""
    where = f"{origin}: [models.{name}]"
    if entry.url or entry.engine == "remote":
        return _remote_spec(name, entry, where)
    max_replicas = entry.max_replicas or entry.replicas
    if max_replicas < entry.replicas:
        raise ConfigError(
            f"{where} max_replicas: at least replicas ({entry.replicas}), not {max_replicas}"
        )
    share = entry.gpus_per_replica
    if share is not None and len(set(entry.gpus)) < share * max_replicas:
        raise ConfigError(
            f"{where} gpus_per_replica: {max_replicas} runner(s) of {share} GPU(s) each need "
            f"{share * max_replicas} in gpus, which lists {len(set(entry.gpus))}"
        )
    if entry.command or entry.engine == "command":
        spec = _command_spec(name, entry, base_dir, where, keep_alive)
        sleep_level = entry.sleep_level if entry.sleep else 0
        return replace(spec, max_replicas=max_replicas, sleep_level=sleep_level)
    for key in ("sleep", "sleep_level"):
        if key in entry.model_fields_set:
            raise ConfigError(
                f"{where} {key}: only for a command engine (vLLM's sleep mode: "
                '"vllm serve … --enable-sleep-mode")'
            )
    if entry.metrics is not None:
        raise ConfigError(
            f"{where} metrics: only for a command engine (llama.cpp's are always merged)"
        )
    if not entry.path:
        raise ConfigError(f"{where} path: required (a .gguf file or a model directory)")
    path = resolve(entry.path, base_dir)
    engine = entry.engine or ("encoder" if path.is_dir() else "llamacpp")
    kind = entry.kind
    if engine == "encoder":
        kind = encoder_kind(path, kind, where)
    elif not path.is_file():
        raise ConfigError(f"{where} path: file not found: {path}")
    shards = shard_set(path) if engine == "llamacpp" else ()
    mmproj = resolve(entry.mmproj, base_dir) if entry.mmproj else None
    if mmproj is not None and not mmproj.is_file():
        raise ConfigError(f"{where} mmproj: file not found: {mmproj}")
    template = entry.chat_template
    if template is not None and template.endswith((".jinja", ".j2", ".txt")):
        template_file = resolve(template, base_dir)
        if not template_file.is_file():
            raise ConfigError(f"{where} chat_template: file not found: {template_file}")
        template = str(template_file)
    binary = entry.llama_server or llama_server
    if engine == "llamacpp" and not binary:
        try:
            flags.parse(entry.extra_args, allow_managed=False)
        except flags.FlagError as exc:
            raise ConfigError(f"{where} extra_args: {exc}") from None
    parallel = entry.parallel if "parallel" in entry.model_fields_set else default_parallel(engine)
    return ModelSpec(
        name=name,
        path=path,
        kind=kind or "chat",
        engine=engine,
        aliases=tuple(entry.aliases),
        parallel=parallel,
        chat_template=template,
        mmproj=mmproj,
        extra_args=tuple(entry.extra_args),
        defaults=dict(entry.defaults),
        keep_alive=entry.keep_alive if "keep_alive" in entry.model_fields_set else keep_alive,
        llama_server=resolve(binary, base_dir) if binary else None,
        shards=shards,
        gpus=_gpus(entry),
        max_replicas=max_replicas,
        **{key: getattr(entry, key) for key in _AS_GIVEN},
    )


def _command_spec(
    name: str, entry: ModelEntry, base_dir: Path, where: str, keep_alive: float | None
) -> ModelSpec:
    """An entry whose runner is its own ``command`` (``modelyard.engines.command.runner``)."""
    if entry.engine not in (None, "command"):
        raise ConfigError(f'{where} command: only for engine = "command" (not {entry.engine})')
    if not entry.command:
        raise ConfigError(f'{where} command: required for engine = "command"')
    try:
        used = placeholders(entry.command)
    except ValueError as exc:
        raise ConfigError(f"{where} command: {exc}") from None
    unknown = used - PLACEHOLDERS
    if unknown:
        known = ", ".join(f"{{{p}}}" for p in sorted(PLACEHOLDERS))
        raise ConfigError(
            f"{where} command: unknown placeholder {{{sorted(unknown)[0]}}} (known: {known})"
        )
    if "port" not in used:
        raise ConfigError(f"{where} command: must use {{port}}, the port the server listens on")
    if "path" in used and not entry.path:
        raise ConfigError(f"{where} path: required, the command uses {{path}}")
    try:
        stop_signal(entry.stop_signal)
    except (KeyError, ValueError):
        raise ConfigError(f"{where} stop_signal: not a signal: {entry.stop_signal!r}") from None
    for key in ("health", "metrics"):
        value = getattr(entry, key)
        if value is not None and not value.startswith("/"):
            raise ConfigError(f"{where} {key}: a path starting with /: {value!r}")
    served = tuple(dict.fromkeys(entry.capabilities))
    kind = entry.kind or _kind_of(served)
    if not served:
        served = ("chat", "completion") if kind == "chat" else (kind,)
    path = Path()
    if entry.path:
        local = resolve(entry.path, base_dir)
        path = local if local.exists() else Path(entry.path)
    return ModelSpec(
        name=name,
        path=path,
        kind=kind,
        engine="command",
        aliases=tuple(entry.aliases),
        parallel=entry.parallel,
        defaults=dict(entry.defaults),
        keep_alive=entry.keep_alive if "keep_alive" in entry.model_fields_set else keep_alive,
        command=tuple(entry.command),
        env=dict(entry.env),
        served=served,
        metrics=entry.metrics,
        gpus=tuple(dict.fromkeys(entry.gpus)),
        **{key: getattr(entry, key) for key in _AS_GIVEN},
    )


def _gpus(entry: ModelEntry) -> tuple[int, ...]:
    """The GPUs a llama.cpp model uses: as listed, else GPU 0 when layers go to a GPU."""
    if entry.gpus:
        return tuple(dict.fromkeys(entry.gpus))
    return (0,) if entry.gpu_layers != 0 else ()


def _remote_spec(name: str, entry: ModelEntry, where: str) -> ModelSpec:
    """An entry served elsewhere (``modelyard.engines.remote.runner``)."""
    if entry.engine not in (None, "remote"):
        raise ConfigError(f'{where} url: only for engine = "remote" (not {entry.engine})')
    if not entry.url:
        raise ConfigError(f'{where} url: required for engine = "remote"')
    url = entry.url.rstrip("/").removesuffix("/v1")
    parsed = urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"{where} url: an http(s) URL such as http://host:8000: {entry.url!r}")
    if parsed.username or parsed.password:
        raise ConfigError(f'{where} url: no credentials in the URL; use api_key = "env:NAME"')
    key_env = None
    if entry.api_key is not None:
        if not entry.api_key.startswith("env:") or not entry.api_key[4:]:
            raise ConfigError(
                f'{where} api_key: "env:NAME", the environment variable that holds the key '
                "(a key is never written in this file)"
            )
        key_env = entry.api_key[4:]
    if entry.path or entry.command or entry.metrics:
        key = "path" if entry.path else "command" if entry.command else "metrics"
        raise ConfigError(f"{where} {key}: not for a remote model (it runs elsewhere)")
    for key in (
        "replicas",
        "max_replicas",
        "scale_up_wait",
        "gpus_per_replica",
        "sleep",
        "sleep_level",
    ):
        if key in entry.model_fields_set:
            hint = "; raise max_concurrency to send it more at once" if "rep" in key else ""
            raise ConfigError(f"{where} {key}: not for a remote model (it runs elsewhere{hint})")
    if "parallel" in entry.model_fields_set and entry.max_concurrency is not None:
        raise ConfigError(f"{where} max_concurrency: the same as parallel; give one of them")
    served = tuple(dict.fromkeys(entry.capabilities))
    kind = entry.kind or _kind_of(served)
    return ModelSpec(
        name=name,
        path=Path(),
        kind=kind,
        engine="remote",
        aliases=tuple(entry.aliases),
        parallel=entry.max_concurrency or entry.parallel,
        defaults=dict(entry.defaults),
        keep_alive=entry.keep_alive if "keep_alive" in entry.model_fields_set else None,
        served=served or (("chat", "completion") if kind == "chat" else (kind,)),
        url=url,
        api_key_env=key_env,
        max_queue=entry.max_queue,
        queue_timeout=entry.queue_timeout,
        health=entry.health if "health" in entry.model_fields_set else "/v1/models",
        health_status=entry.health_status,
        ready_timeout=entry.ready_timeout,
        upstream_model=entry.upstream_model,
    )


def _kind_of(served: tuple[str, ...]) -> ModelKind:
    if not served or "chat" in served or "completion" in served:
        return "chat"
    return "embedding" if "embedding" in served else "rerank"


def encoder_kind(path: Path, kind: ModelKind | None, where: str) -> ModelKind:
    """The kind of a model directory for the encoder engine: as configured, or from its files."""
    if not path.is_dir() or not is_hf_dir(path):
        raise ConfigError(
            f"{where} path: the encoder engine needs a model directory with config.json "
            f"or modules.json: {path}"
        )
    try:
        info = read_hf_dir(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where} path: cannot read {path}: {exc}") from None
    if kind == "chat" or (kind is None and info.kind is None):
        what = f"{info.why}" if info.kind is None else "a chat model"
        raise ConfigError(
            f"{where} kind: the encoder engine serves embedding and rerank models, not {what}"
        )
    return kind or info.kind or "embedding"


def merge(explicit: Sequence[ModelSpec], found: Sequence[ModelSpec]) -> list[ModelSpec]:
    """Explicit entries win over discovered ones with the same name or the same file, and
    keep their aliases: a discovered model loses an alias (a pulled name) an entry uses."""
    names = {spec.name for spec in explicit}
    taken = names | {alias for spec in explicit for alias in spec.aliases}
    files = {spec.path for spec in explicit}
    return [*explicit] + [
        replace(s, aliases=tuple(a for a in s.aliases if a not in taken))
        for s in found
        if s.name not in names and s.path not in files
    ]


def check_names(models: list[ModelSpec], origin: str) -> None:
    seen: dict[str, str] = {}
    for spec in models:
        for name in (spec.name, *spec.aliases):
            if name in seen and seen[name] != spec.name:
                raise ConfigError(
                    f"{origin}: [models.{spec.name}] aliases: {name!r} already names "
                    f"model {seen[name]!r}"
                )
            seen[name] = spec.name
