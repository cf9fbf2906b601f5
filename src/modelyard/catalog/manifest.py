"""The record ``modelyard pull`` keeps beside what it downloaded: ``.modelyard-pull.json``.

One file per pulled repository directory (``<models_dir>/<owner>/<repo>/``) lists each pull
into it: the reference, the commit, and every file with its size and checksum. Discovery
reads it to give pulled models the names users pulled them by (``owner/repo:Q4_K_M``;
``owner/repo`` for the first model pulled into the directory), ``pull`` to tell that a model
is already there, and ``rm`` to know which files belong to a model.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MANIFEST = ".modelyard-pull.json"
_SEARCH_UP = 4


@dataclass(frozen=True)
class PulledFile:
    path: str
    """Relative to the directory, with ``/``."""
    size: int
    sha256: str | None = None
    """For files stored with Git LFS (every GGUF and safetensors file)."""
    blob_id: str | None = None
    """Git's blob id, for small files kept in Git itself."""


@dataclass(frozen=True)
class Pull:
    repo: str
    tag: str
    """The quantisation or file chosen; ``""`` for a Hugging Face directory."""
    revision: str
    commit: str
    model: str
    """The path a runner opens, relative to the directory; ``"."`` for the directory itself."""
    files: tuple[PulledFile, ...]
    pulled_at: str

    @property
    def reference(self) -> str:
        return f"{self.repo}:{self.tag}" if self.tag else self.repo


def read_manifest(directory: Path) -> list[Pull]:
    """The pulls recorded in ``directory``; ``[]`` when there is no (readable) record."""
    try:
        data = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        return [_pull(item) for item in data["pulls"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def write_manifest(directory: Path, pulls: list[Pull]) -> None:
    """Replaces the record atomically; removes it when ``pulls`` is empty."""
    path = directory / MANIFEST
    if not pulls:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"pulls": [asdict(p) for p in pulls]}, indent=2) + "\n", encoding="utf-8"
    )
    os.replace(tmp, path)


def aliases(directory: Path, pulls: list[Pull]) -> dict[Path, tuple[str, ...]]:
    """The names each model pulled into ``directory`` is known by, keyed by its path."""
    result: dict[Path, tuple[str, ...]] = {}
    for i, pull in enumerate(pulls):
        names = [pull.reference]
        if i == 0 and pull.tag:
            names.append(pull.repo)
        path = directory if pull.model == "." else directory / pull.model
        result[path] = tuple(names)
    return result


def projectors(directory: Path, pulls: list[Pull]) -> dict[Path, Path]:
    """The multimodal projector pulled together with each model in ``directory``."""
    result: dict[Path, Path] = {}
    for pull in pulls:
        for f in pull.files:
            if f.path.rsplit("/", 1)[-1].lower().startswith("mmproj"):
                result[directory / pull.model] = directory / f.path
    return result


def find_pull(path: Path) -> tuple[Path, Pull] | None:
    """The directory and record of the pull that brought the model at ``path``, if any.

    The record sits in the repository's directory: the model's own (a Hugging Face
    directory), its parent, or a few levels up (``<repo>/Q4_K_M/model-00001-of-00003.gguf``).
    """
    for directory in (path, *list(path.parents)[:_SEARCH_UP]):
        for pull in read_manifest(directory):
            model = directory if pull.model == "." else directory / pull.model
            if model == path:
                return directory, pull
    return None


def _pull(item: dict[str, Any]) -> Pull:
    files = tuple(PulledFile(**f) for f in item.pop("files"))
    return Pull(files=files, **item)
