"""Downloads a model from the Hugging Face hub into the models directory.

``pull`` resolves the reference to a commit and its files (``modelyard.hub.api``, so
``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` apply), picks the files the reference
stands for (``modelyard.hub.ref``), and then:

1. does nothing when the record beside the files says they are there at that checksum;
2. refuses to start when the disk cannot hold what is left to fetch;
3. downloads each file to ``<dir>/.partial/<file>.<checksum>.part``, resuming a partial file with a
   ``Range`` request (after an interruption, or when a connection drops mid-file: up to
   ``RETRIES`` times in a row), hashing as it writes;
4. checks every file's size and checksum (sha256 for LFS files, Git's blob id for the rest);
   a mismatch deletes that part and fails the pull;
5. only once every file verified, moves them into place and writes the record. A pull that
   fails leaves nothing a catalog would pick up (partial files live in a hidden folder).

It runs synchronously (the server calls it in a worker thread) and reports through a
``Progress`` callback; setting the ``cancel`` event stops it at the next chunk, keeping the
partial files for the next attempt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Literal

import httpx

from modelyard.catalog.manifest import Pull, PulledFile, read_manifest, write_manifest
from modelyard.errors import (
    ConflictError,
    DiskFullError,
    HubError,
    HubNotFoundError,
    VerificationError,
)
from modelyard.hub.api import Hub, RemoteFile
from modelyard.hub.ref import Reference, Selection, select
from modelyard.quantity import format_size

RETRIES = 5
_CHUNK = 1 << 20
_DISK_MARGIN = 256 * 1024**2
_PROGRESS_EVERY = 0.1
_MARKERS = ("config.json", "modules.json")

Status = Literal["resolving", "downloading", "verifying", "success"]


@dataclass(frozen=True)
class Progress:
    status: Status
    file: str | None = None
    completed: int = 0
    total: int = 0


@dataclass(frozen=True)
class PullResult:
    reference: str
    """The name the model is served by: ``owner/repo:QUANT`` or ``owner/repo``."""
    path: Path
    """The GGUF file (the first shard) or the model directory."""
    downloaded: int
    """Bytes fetched by this pull (0 when the model was already there)."""
    up_to_date: bool


class PullCancelledError(Exception):
    """The caller set the ``cancel`` event; partial files are kept."""


def target_dir(models_dir: Path, repo: str) -> Path:
    return models_dir.joinpath(*repo.split("/"))


def pull(
    ref: Reference,
    models_dir: Path,
    hub: Hub,
    progress: Callable[[Progress], None] = lambda _: None,
    cancel: threading.Event | None = None,
) -> PullResult:
    """Fetches what ``ref`` stands for into ``models_dir``; see the module docstring."""
    directory = target_dir(models_dir, ref.repo)
    if hub.offline:
        return _offline(ref, directory)
    progress(Progress("resolving"))
    commit, remote = hub.resolve(ref)
    selection = select(ref, [f.path for f in remote])
    by_path = {f.path: f for f in remote}
    wanted = [by_path[p] for p in selection.files]
    for f in wanted:
        parts = PurePosixPath(f.path).parts
        if not parts or f.path.startswith("/") or ".." in parts or "\\" in f.path:
            raise HubError(f"The hub listed a file with an unsafe path: {f.path!r}")
    reference = f"{ref.repo}:{selection.tag}" if selection.tag else ref.repo
    model_path = directory if selection.model == "." else directory / selection.model
    pulls = read_manifest(directory)
    have = {f.path: f for p in pulls for f in p.files}
    missing = [f for f in wanted if not _in_place(directory, f, have.get(f.path))]
    if not missing:
        _record(directory, pulls, ref, selection, commit, wanted)
        return PullResult(reference, model_path, 0, up_to_date=True)

    partial = directory / ".partial"
    partial.mkdir(parents=True, exist_ok=True)
    downloaded = 0
    with _lock(partial, ref.repo):
        _check_disk(directory, [(f, _part(partial, f)) for f in missing])
        for f in missing:
            downloaded += _fetch(hub, ref.repo, commit, f, _part(partial, f), progress, cancel)
        # Config files last: a directory watcher sees a model only once all of it is there.
        for f in sorted(missing, key=lambda f: f.path.endswith(_MARKERS)):
            destination = directory / f.path
            destination.parent.mkdir(parents=True, exist_ok=True)
            _part(partial, f).replace(destination)
        _record(directory, read_manifest(directory), ref, selection, commit, wanted)
    shutil.rmtree(partial, ignore_errors=True)
    progress(Progress("success", completed=downloaded, total=downloaded))
    return PullResult(reference, model_path, downloaded, up_to_date=False)


def _offline(ref: Reference, directory: Path) -> PullResult:
    for p in read_manifest(directory):
        if ref.tag is None or p.tag.upper() == ref.tag.upper() or p.model.endswith(ref.tag):
            path = directory if p.model == "." else directory / p.model
            if all((directory / f.path).is_file() for f in p.files):
                return PullResult(p.reference, path, 0, up_to_date=True)
    raise HubError(
        f"Offline mode is on (HF_HUB_OFFLINE) and {ref} has not been pulled before",
        param="model",
    )


def _in_place(directory: Path, remote: RemoteFile, recorded: PulledFile | None) -> bool:
    """The file is there and the record says it has the hub's checksum."""
    if recorded is None or recorded.size != remote.size:
        return False
    if (remote.sha256 or recorded.sha256) and recorded.sha256 != remote.sha256:
        return False
    if remote.sha256 is None and recorded.blob_id != remote.blob_id:
        return False
    path = directory / remote.path
    return path.is_file() and path.stat().st_size == remote.size


def _record(
    directory: Path,
    pulls: list[Pull],
    ref: Reference,
    selection: Selection,
    commit: str,
    files: list[RemoteFile],
) -> None:
    entry = Pull(
        repo=ref.repo,
        tag=selection.tag,
        revision=ref.revision,
        commit=commit,
        model=selection.model,
        files=tuple(PulledFile(f.path, f.size, f.sha256, f.blob_id) for f in files),
        pulled_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    kept = [p for p in pulls if p.model != entry.model]
    old = next((p for p in pulls if p.model == entry.model), None)
    if old is not None and old.commit == commit and old.files == entry.files:
        return  # nothing changed: leave the record (and its date) alone
    index = pulls.index(old) if old is not None else len(kept)
    kept.insert(index, entry)
    write_manifest(directory, kept)


def _part(partial: Path, f: RemoteFile) -> Path:
    """Where ``f`` downloads to. The name carries the checksum, so a partial file of another
    version of the same path (the repo changed since) is never resumed into this one."""
    return partial / f"{f.path}.{(f.sha256 or f.blob_id or 'unknown')[:16]}.part"


@contextlib.contextmanager
def _lock(partial: Path, repo: str) -> Iterator[None]:
    with (partial / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConflictError(
                f"Another pull into {repo} is in progress; wait for it to finish",
                param="model",
            ) from None
        yield


def _check_disk(directory: Path, files: list[tuple[RemoteFile, Path]]) -> None:
    need = sum(max(f.size - (part.stat().st_size if part.exists() else 0), 0) for f, part in files)
    free = shutil.disk_usage(directory).free
    if need + _DISK_MARGIN > free:
        raise DiskFullError(
            f"Not enough disk space in {directory}: the download needs {format_size(need)} "
            f"more, {format_size(free)} is free"
        )


def _fetch(
    hub: Hub,
    repo: str,
    commit: str,
    f: RemoteFile,
    part: Path,
    progress: Callable[[Progress], None],
    cancel: threading.Event | None,
) -> int:
    """Downloads ``f`` to ``part`` (resuming what is there) and verifies it; bytes fetched."""
    part.parent.mkdir(parents=True, exist_ok=True)
    if part.exists() and part.stat().st_size > f.size:
        part.unlink()
    digest = _Digest(f)
    reported = 0.0

    def tick(done: int) -> None:
        nonlocal reported
        if cancel is not None and cancel.is_set():
            raise PullCancelledError(f"pull of {repo} cancelled")
        now = time.monotonic()
        if now - reported >= _PROGRESS_EVERY or done == f.size:
            reported = now
            progress(Progress("downloading", f.path, done, f.size))

    with part.open("ab+") as out:
        out.seek(0)
        while chunk := out.read(_CHUNK):
            digest.update(chunk)
        offset = out.tell()
        start = offset
        failures = 0
        tick(offset)
        while offset < f.size:
            try:
                offset = _stream(hub, hub.url(repo, commit, f.path), offset, out, digest, f, tick)
                failures = 0
            except httpx.TransportError as exc:
                failures += 1
                if failures > RETRIES:
                    raise HubError(
                        f"Download of {f.path} failed {failures} times in a row: {exc}; "
                        "pull again to resume"
                    ) from None
                time.sleep(min(0.25 * 2**failures, 5.0))
                offset = out.tell()
    progress(Progress("verifying", f.path, f.size, f.size))
    if part.stat().st_size != f.size or not digest.matches():
        part.unlink(missing_ok=True)
        raise VerificationError(
            f"{f.path} from {repo} does not match the hub's checksum "
            f"({digest.kind} {digest.expected}); the damaged download was deleted, pull again"
        )
    return f.size - start


def _stream(
    hub: Hub,
    url: str,
    offset: int,
    out: IO[bytes],
    digest: _Digest,
    f: RemoteFile,
    tick: Callable[[int], None],
) -> int:
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with hub.client().stream("GET", url, headers=headers) as response:
        if response.status_code in (401, 403):
            raise HubError(f"The hub refused {f.path} ({response.status_code}): set HF_TOKEN")
        if response.status_code == 404:
            raise HubNotFoundError(f"{f.path} is gone from the hub")
        if response.status_code == 416 or (offset and response.status_code == 200):
            # The server ignores or rejects the range: start the file over.
            out.seek(0)
            out.truncate()
            digest.reset()
            offset = 0
            if response.status_code == 416:
                return offset
        elif response.status_code >= 400:
            raise HubError(f"The hub answered {response.status_code} for {f.path}")
        for chunk in response.iter_bytes():
            out.write(chunk)
            digest.update(chunk)
            offset += len(chunk)
            tick(offset)
        out.flush()
    return offset


class _Digest:
    """sha256 of the content for LFS files, Git's blob sha1 for the others."""

    def __init__(self, f: RemoteFile) -> None:
        self._f = f
        self.kind = "sha256" if f.sha256 else "git blob id"
        self.expected = f.sha256 or f.blob_id
        self.reset()

    def reset(self) -> None:
        if self._f.sha256:
            self._hash = hashlib.sha256()
        else:
            self._hash = hashlib.sha1(usedforsecurity=False)
            self._hash.update(b"blob %d\0" % self._f.size)

    def update(self, data: bytes) -> None:
        self._hash.update(data)

    def matches(self) -> bool:
        return self.expected is None or self._hash.hexdigest() == self.expected
