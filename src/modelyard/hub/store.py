"""Deleting what ``pull`` brought: the files of one pulled model, nothing else."""

from __future__ import annotations

import shutil
from pathlib import Path

from modelyard.catalog.manifest import (
    MANIFEST,
    Pull,
    find_pull,
    read_manifest,
    write_manifest,
)
from modelyard.catalog.spec import ModelSpec
from modelyard.errors import InvalidRequestError


def pulled(spec: ModelSpec) -> tuple[Path, Pull]:
    """Where ``spec`` was pulled to and its record; ``InvalidRequestError`` when modelyard did
    not pull it (so it does not delete it either)."""
    found = find_pull(spec.path) if spec.path != Path() else None
    if found is None:
        where = f" ({spec.path})" if spec.path != Path() else ""
        raise InvalidRequestError(
            f"Model {spec.name!r}{where} was not pulled by modelyard, so modelyard does not "
            "delete it: remove the file or its [models] entry yourself",
            param="model",
        )
    return found


def remove(spec: ModelSpec, models_dir: Path) -> list[Path]:
    """Deletes the files pulled for ``spec``; the paths deleted.

    A file another pulled model still uses (a shared ``mmproj``) stays. A Hugging Face
    directory goes as a whole (with the ONNX export a runner may have written into it);
    empty folders up to ``models_dir`` go too. A model that was not pulled (a file the user
    put there, or a config entry) is not touched: ``InvalidRequestError``.
    """
    directory, record = pulled(spec)
    pulls = read_manifest(directory)
    rest = [p for p in pulls if p.model != record.model]
    deleted: list[Path] = []
    if record.model == ".":
        deleted = [p for p in directory.rglob("*") if p.is_file()]
        shutil.rmtree(directory)
    else:
        shared = {f.path for p in rest for f in p.files}
        for f in record.files:
            path = directory / f.path
            if f.path not in shared and path.is_file():
                path.unlink()
                deleted.append(path)
        write_manifest(directory, rest)
        if not rest:
            deleted.append(directory / MANIFEST)
    for folder in sorted({p.parent for p in deleted} | {directory}, key=lambda p: -len(p.parts)):
        _prune(folder, models_dir)
    return deleted


def _prune(directory: Path, models_dir: Path) -> None:
    """Removes ``directory`` and its parents while empty, stopping at ``models_dir``."""
    for folder in (directory, *directory.parents):
        if folder == models_dir or models_dir not in folder.parents:
            return
        if not folder.exists():
            continue
        partial = folder / ".partial"
        if partial.is_dir() and not any(p.name.endswith(".part") for p in partial.rglob("*")):
            shutil.rmtree(partial, ignore_errors=True)
        try:
            folder.rmdir()
        except OSError:
            return
