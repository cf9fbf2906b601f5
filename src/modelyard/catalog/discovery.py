"""Models found by scanning a directory for GGUF files and Hugging Face model directories.

Every ``*.gguf`` becomes a model named after its file (lower case, no extension). Split
models (``name-00001-of-00003.gguf``) become one model named without the shard suffix,
served from the first shard. ``mmproj*.gguf`` files are not models: a pulled model gets the
projector pulled with it; any other model gets the projector in its directory whose name
shares the longest prefix with its own (each of several quantisations of one model gets it;
an unrelated model beside them does not). A Hugging Face directory (``config.json`` or
``modules.json``) that the encoder engine can serve becomes an ``embedding`` or ``rerank``
model named after the directory; nothing inside it is scanned further. Hidden folders
(``.partial`` downloads in progress, ``.cache``) are skipped. Models that ``modelyard pull``
fetched are also known by the names they were pulled by (``owner/repo:Q4_K_M``), read from
the pull record beside them.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import replace
from pathlib import Path

from modelyard.catalog.hf import context_length, is_hf_dir, read_hf_dir
from modelyard.catalog.manifest import aliases, projectors, read_manifest
from modelyard.catalog.spec import ENCODER_PARALLEL, ModelSpec, encoder_serves

log = logging.getLogger(__name__)

_SHARD = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


def shard_set(path: Path) -> tuple[Path, ...]:
    """All shards of a split GGUF given its first shard; ``()`` for a single file.

    Raises ``FileNotFoundError`` when a shard is missing.
    """
    match = _SHARD.match(path.name)
    if match is None:
        return ()
    stem, count = match["stem"], int(match["count"])
    shards = tuple(
        path.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)
    )
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise FileNotFoundError(f"split model {path.name} is missing {', '.join(missing)}")
    return shards


def _model_name(path: Path) -> str:
    match = _SHARD.match(path.name)
    stem = match["stem"] if match else path.stem
    return stem.lower()


def discover(models_dir: Path, defaults: ModelSpec) -> list[ModelSpec]:
    """Specs for the models under ``models_dir`` (recursively), built from ``defaults``."""
    if not models_dir.is_dir():
        return []
    specs: list[ModelSpec] = []
    # Pull records, gathered top-down: a repo's model may sit in a sub-folder (Q4_K_M/…).
    pulled: dict[Path, tuple[str, ...]] = {}
    pulled_projectors: dict[Path, Path] = {}
    for directory, dirs, files in os.walk(models_dir, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        records = read_manifest(Path(directory))
        pulled.update(aliases(Path(directory), records))
        pulled_projectors.update(projectors(Path(directory), records))
        if is_hf_dir(Path(directory)):
            dirs.clear()
            spec = _hf_spec(Path(directory), defaults)
            if spec is not None:
                specs.append(replace(spec, aliases=pulled.get(spec.path, ())))
            continue
        ggufs = sorted(f for f in files if f.lower().endswith(".gguf"))
        mmprojs = [f for f in ggufs if f.lower().startswith("mmproj")]
        for filename in ggufs:
            if filename in mmprojs:
                continue
            match = _SHARD.match(filename)
            if match and int(match["index"]) != 1:
                continue
            path = Path(directory) / filename
            try:
                shards = shard_set(path)
            except FileNotFoundError as exc:
                log.warning("skipping %s: %s", path, exc)
                continue
            spec = replace(
                defaults,
                name=_model_name(path),
                path=path,
                shards=shards,
                aliases=pulled.get(path, ()),
            )
            specs.append(spec)
        _attach_projectors(specs, Path(directory), mmprojs, pulled_projectors)
    specs = [
        replace(s, mmproj=pulled_projectors[s.path]) if s.path in pulled_projectors else s
        for s in specs
    ]
    return _unique_names(specs)


def _hf_spec(directory: Path, defaults: ModelSpec) -> ModelSpec | None:
    try:
        info = read_hf_dir(directory)
        ctx = context_length(directory)
    except (OSError, ValueError) as exc:
        log.warning("skipping %s: %s", directory, exc)
        return None
    if info.kind is None:
        log.info("skipping %s: %s is not served by the encoder engine", directory, info.why)
        return None
    name = directory.name.lower()
    return replace(
        defaults,
        name=name,
        path=directory,
        kind=info.kind,
        served=encoder_serves(info.kind),
        ctx=ctx or defaults.ctx,
        engine="encoder",
        parallel=ENCODER_PARALLEL,
    )


def _attach_projectors(
    specs: list[ModelSpec], directory: Path, mmprojs: list[str], pulled: dict[Path, Path]
) -> None:
    """Pairs the projectors of ``directory`` with its models by shared name prefix."""
    unpaired = [
        i for i, s in enumerate(specs) if s.path.parent == directory and s.path not in pulled
    ]
    for projector in mmprojs:
        if directory / projector in pulled.values() or not unpaired:
            continue
        shared = {i: _shared_prefix(specs[i].path.name, projector[6:]) for i in unpaired}
        best = max(shared.values())
        for i in unpaired:
            if shared[i] == best and specs[i].mmproj is None:
                specs[i] = replace(specs[i], mmproj=directory / projector)


def _shared_prefix(a: str, b: str) -> int:
    b = b.lower().lstrip("-_")
    n = 0
    for x, y in zip(a.lower(), b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _unique_names(specs: list[ModelSpec]) -> list[ModelSpec]:
    """Two files with one name in different folders: the later gets its folder as a prefix."""
    seen: set[str] = set()
    result = []
    for spec in specs:
        name = spec.name
        if name in seen:
            name = f"{spec.path.parent.name.lower()}/{name}"
        seen.add(name)
        result.append(replace(spec, name=name))
    return result
