"""Saved KV states of llama.cpp slots on disk (warm swaps): ``<home>/kv``.

llama.cpp writes a slot's state into this directory (``--slot-save-path``) and reads it
back from there; this store names, checks and budgets what it wrote. Each state is two
files: ``<key>.bin`` (llama.cpp's own format: a header with the tokens the slot holds, then
the KV cache and the context checkpoints) and ``<key>.json`` (its manifest: which model
setup it belongs to, its size and checksum, its tokens, when it was saved and last used).

A state is usable only by the setup that wrote it (``identity``: the model file as it is
now, its context, the engine build and the flags that shape the cache); anything else, a
file whose size or checksum is not the manifest's, or a header that does not hold the
manifest's tokens, is deleted when it is looked at. The directory never holds more than its
budget: the least recently used states go first.

Everything here touches files: the gateway calls it in a thread, never on the event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import time
import zlib
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from modelyard.catalog.spec import ModelSpec

log = logging.getLogger(__name__)

_MAGIC = 0x67677371  # llama.cpp's LLAMA_STATE_SEQ_MAGIC ("ggsq")
_HEADER = struct.Struct("<3I")
_CHUNK = 1 << 20
_REUSE = "reuse.state"
"""Which setups a restore was seen to work for (``KvStore.reuses``)."""
SCRATCH = "saving-"
"""Prefix of a file llama.cpp is still writing (renamed once the save is checked)."""


@dataclass
class Saved:
    """One saved slot state, as its manifest says it."""

    key: str
    identity: str
    model: str
    path: str
    """The model file it was computed from."""
    tokens: int
    bytes: int
    crc: int
    saved_at: float
    used_at: float
    save_seconds: float
    prompt_tps: float
    """The model's measured prompt speed (tokens/s) when it was saved: what recomputing
    these tokens would cost."""
    prefix: list[int] | None = None
    """The tokens it holds, when llama.cpp's header could be read (``None``: not)."""


def identity(spec: ModelSpec) -> str:
    """What a state is valid for: the model's files as they are now, its context per slot, the
    engine build and its flags (a cache type changes the state's layout)."""
    files = []
    for path in spec.files:
        stat = path.stat()
        files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    if spec.llama_server is not None:
        stat = spec.llama_server.stat()
        build = f"{spec.llama_server}:{stat.st_size}:{stat.st_mtime_ns}"
    else:
        build = f"xllamacpp {metadata.version('xllamacpp')}"
    blob = json.dumps(
        [files, spec.ctx, build, list(spec.extra_args), str(spec.mmproj or "")]
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def header_tokens(path: Path) -> list[int] | None:
    """The tokens a state file says its slot holds (``None``: not a header this reads).

    llama.cpp writes its magic, a version and a count ``n``, then ``n`` int32: ``-1, 1``,
    the token count ``t``, the ``t`` tokens, and ``0`` (``n = t + 4``)."""
    with path.open("rb") as f:
        head = f.read(_HEADER.size)
        if len(head) < _HEADER.size:
            return None
        magic, _version, count = _HEADER.unpack(head)
        if magic != _MAGIC or count < 4 or count > 1 << 24:
            return None
        raw = f.read(4 * count)
    if len(raw) < 4 * count:
        return None
    values = struct.unpack(f"<{count}i", raw)
    if values[0] != -1 or values[1] != 1 or values[2] != count - 4:
        return None
    return list(values[3 : 3 + values[2]])


def checksum(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


class KvStore:
    """The states in ``root`` (see the module)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def save_path(self) -> str:
        """What llama.cpp's ``--slot-save-path`` is given (it joins names without a slash)."""
        return str(self.root) + os.sep

    def scratch(self, slot: int) -> str:
        """A fresh file name for llama.cpp to save ``slot`` into."""
        self.root.mkdir(parents=True, exist_ok=True)
        return f"{SCRATCH}{os.getpid()}-{time.monotonic_ns()}-{slot}.bin"

    def keep(
        self,
        name: str,
        ident: str,
        spec: ModelSpec,
        tokens: int,
        save_seconds: float,
        prompt_tps: float,
    ) -> Saved | None:
        """Files the state llama.cpp saved as ``name``: checked, checksummed and named by the
        tokens it holds (the same conversation saved again replaces itself). ``None``: it was
        not a state this store can check (deleted)."""
        scratch = self.root / name
        try:
            prefix = header_tokens(scratch)
            if prefix is not None and len(prefix) != tokens:
                prefix = None
            size = scratch.stat().st_size
            crc = checksum(scratch)
        except OSError as exc:
            log.warning("saved KV state %s unreadable: %s", scratch, exc)
            scratch.unlink(missing_ok=True)
            return None
        held = crc.to_bytes(4, "big")
        if prefix is not None:
            held = struct.pack(f"<{len(prefix)}i", *prefix)
        key = hashlib.sha256(ident.encode() + held).hexdigest()[:32]
        now = time.time()
        saved = Saved(
            key, ident, spec.name, str(spec.path), tokens, size, crc, now, now,
            save_seconds, prompt_tps, prefix,
        )  # fmt: skip
        os.replace(scratch, self._bin(key))
        self._write(saved)
        return saved

    def states(self, ident: str | None = None) -> list[Saved]:
        """Every state with a readable manifest (of ``ident`` only, if given), most recently
        used first."""
        found = []
        for manifest in self.root.glob("*.json"):
            saved = self._read(manifest)
            if saved is not None and (ident is None or saved.identity == ident):
                found.append(saved)
        return sorted(found, key=lambda s: s.used_at, reverse=True)

    def problem(self, saved: Saved) -> str | None:
        """Why ``saved`` must not be restored (``None``: it is whole, as saved)."""
        path = self._bin(saved.key)
        try:
            size = path.stat().st_size
            if size != saved.bytes:
                return f"truncated or grown: {size} bytes, {saved.bytes} saved"
            if saved.prefix is not None and header_tokens(path) != saved.prefix:
                return "its header does not hold the tokens saved"
            if checksum(path) != saved.crc:
                return "checksum mismatch (corrupt)"
        except OSError as exc:
            return f"unreadable: {exc}"
        return None

    def file_name(self, saved: Saved) -> str:
        """The name llama.cpp restores it by."""
        return self._bin(saved.key).name

    def touch(self, saved: Saved) -> None:
        saved.used_at = time.time()
        self._write(saved)

    def discard(self, saved: Saved) -> None:
        for path in (self._bin(saved.key), self._manifest(saved.key)):
            path.unlink(missing_ok=True)

    def trim(self, budget: int) -> list[Saved]:
        """Deletes the least recently used states until all fit in ``budget`` bytes; the
        ones deleted."""
        kept = 0
        dropped = []
        for saved in self.states():
            if kept + saved.bytes <= budget:
                kept += saved.bytes
            else:
                self.discard(saved)
                dropped.append(saved)
        return dropped

    def forget(self, path: Path) -> list[Saved]:
        """Deletes every state computed from the model file ``path`` (it is being removed)."""
        gone = [s for s in self.states() if Path(s.path) == path]
        for saved in gone:
            self.discard(saved)
        return gone

    def sweep(self) -> int:
        """Deletes what no manifest accounts for (saves cut short, files left alone) and
        states whose model file is gone; the number of files deleted."""
        if not self.root.is_dir():
            return 0
        deleted = 0
        keys = set()
        for manifest in self.root.glob("*.json"):
            saved = self._read(manifest)
            if saved is None or not Path(saved.path).exists():
                manifest.unlink(missing_ok=True)
                deleted += 1
            else:
                keys.add(saved.key)
        for path in self.root.iterdir():
            if path.suffix == ".bin" and path.stem not in keys:
                path.unlink(missing_ok=True)
                deleted += 1
        return deleted

    def reuses(self, ident: str) -> bool | None:
        """Whether a restore of ``ident``'s states was seen to spare its prompt (``None``:
        not tried yet)."""
        with contextlib.suppress(OSError, ValueError):
            value = json.loads((self.root / _REUSE).read_text()).get(ident)
            return value if isinstance(value, bool) else None
        return None

    def found_reuse(self, ident: str, reused: bool) -> None:
        path = self.root / _REUSE
        seen: dict[str, bool] = {}
        with contextlib.suppress(OSError, ValueError):
            seen = dict(json.loads(path.read_text()))
        seen[ident] = reused
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps(seen))
        os.replace(scratch, path)

    def _bin(self, key: str) -> Path:
        return self.root / f"{key}.bin"

    def _manifest(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def _write(self, saved: Saved) -> None:
        target = self._manifest(saved.key)
        scratch = target.with_suffix(".json.tmp")
        scratch.write_text(json.dumps(asdict(saved)))
        os.replace(scratch, target)

    def _read(self, manifest: Path) -> Saved | None:
        with contextlib.suppress(OSError, ValueError, TypeError):
            return Saved(**json.loads(manifest.read_text()))
        return None


def warm_swaps(spec: ModelSpec) -> bool:
    """Its slots are saved at an unload and restored at the next load: a chat model (an
    embedding's slots hold nothing worth keeping), unless ``kv_cache_disk`` is 0."""
    return spec.kind == "chat" and spec.kv_cache_disk > 0
