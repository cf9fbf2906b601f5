"""Reads the header of a GGUF file (metadata and tensor table, not the tensors themselves)
and estimates the memory a llama.cpp server needs for it.

Format (little-endian): ``GGUF``, u32 version, u64 tensor count, u64 key/value count, the
key/value pairs, then per tensor its name, dimensions, type and offset. Large arrays (the
tokenizer's vocabulary) are skipped, keeping their length, so reading a 260k-token
vocabulary costs one pass over its strings and no memory.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from modelyard.catalog.spec import ModelSpec

_MAGIC = b"GGUF"
_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING = 8
_ARRAY = 9
_KEEP_ARRAY_MAX = 4096

# Beyond weights and KV cache: the runner process itself, compute buffers and the logits
# rows. Measured RSS of Gemma-3-270M Q4_K_M left 114-122 MiB over file + KV at
# (ctx, parallel) = (512, 4), (4096, 4), (8192, 8); the vocabulary term is the logits share.
_ENGINE_OVERHEAD = 100 * 1024**2
_MAX_FIELD = 64 * 1024**2
"""No string in a sound header is this long (chat templates are kilobytes)."""
_UBATCH = 512


# llama.cpp's ``llama_ftype``: what ``general.file_type`` says the weights mostly are.
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
}


class GGUFError(ValueError):
    """The file is not a GGUF file or its header is damaged."""


@dataclass(frozen=True)
class ArrayInfo:
    """A metadata array too long to keep (a vocabulary): its element type and length."""

    type: int
    length: int


@dataclass(frozen=True)
class GGUFInfo:
    version: int
    tensor_count: int
    metadata: Mapping[str, Any]
    size: int
    """Bytes on disk, all shards together."""
    parameters: int = 0
    """Weights in the tensor table, all shards together."""

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def file_type(self) -> str | None:
        """The quantisation most weights use (``Q4_K_M``), from ``general.file_type``."""
        value = self.metadata.get("general.file_type")
        return FILE_TYPES.get(value, f"type {value}") if isinstance(value, int) else None

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None


_read_once: dict[Path, tuple[tuple[Path, ...], int, int, GGUFInfo]] = {}
"""By file: its shards, size and modification time when read, and what it said (one entry
per GGUF of the catalog, however large: a header takes 0.2 s to read, and a list of a
thousand models must not read them all again)."""

_unkept = False
"""Whether a header was read since ``keep`` last wrote (or ``remember`` took) the file."""


_reading: dict[Path, threading.Lock] = {}
"""A lock per file being read: two threads that want the same header (the estimates read at
start and a listing) read it once, not once each."""
_reading_lock = threading.Lock()


def gguf_info(spec: ModelSpec) -> GGUFInfo:
    """``read_gguf`` of a model's file, read once while the file stays the same."""
    global _unkept
    stat = spec.path.stat()
    now = (spec.shards, stat.st_size, stat.st_mtime_ns)
    known = _read_once.get(spec.path)
    if known is not None and known[:3] == now:
        return known[3]
    with _reading_lock:
        lock = _reading.setdefault(spec.path, threading.Lock())
    try:
        with lock:
            known = _read_once.get(spec.path)
            if known is not None and known[:3] == now:
                return known[3]  # read by another thread meanwhile
            info = read_gguf(spec.path, spec.shards)
            _read_once[spec.path] = (*now, info)
            _unkept = True
            return info
    finally:
        with _reading_lock:
            _reading.pop(spec.path, None)


def remember(path: Path) -> int:
    """Takes the headers read by an earlier run from ``path`` (``keep``'s file); each is used
    only while its file keeps the size and modification time it had. The number taken."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0
    taken = 0
    for entry in saved if isinstance(saved, list) else []:
        try:
            file, shards, size, mtime, info = entry
            metadata = {k: _from_json(v) for k, v in info["metadata"].items()}
            read = GGUFInfo(info["version"], info["tensor_count"], metadata, info["size"],
                            info["parameters"])  # fmt: skip
            _read_once.setdefault(Path(file), (tuple(map(Path, shards)), size, mtime, read))
            taken += 1
        except (TypeError, ValueError, KeyError):
            continue
    return taken


def keep(path: Path) -> bool:
    """Writes every header read so far to ``path`` (for ``remember`` at the next start), less
    those whose files are gone or changed; only when that changes what the file holds (a
    thousand headers are a few MB). Whether it wrote."""
    global _unkept
    for file, (_, size, mtime, _) in list(_read_once.items()):
        try:
            stat = file.stat()
        except OSError:
            stat = None
        if stat is None or (stat.st_size, stat.st_mtime_ns) != (size, mtime):
            _read_once.pop(file, None)
            _unkept = True
    if not _unkept and path.exists():
        return False
    _unkept = False
    entries = [
        [str(file), [str(s) for s in shards], size, mtime, {
            "version": info.version, "tensor_count": info.tensor_count, "size": info.size,
            "parameters": info.parameters,
            "metadata": {k: _to_json(v) for k, v in info.metadata.items()},
        }]
        for file, (shards, size, mtime, info) in list(_read_once.items())
    ]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(entries))
    os.replace(scratch, path)
    return True


def _to_json(value: Any) -> Any:
    return {"array": [value.type, value.length]} if isinstance(value, ArrayInfo) else value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and list(value) == ["array"]:
        return ArrayInfo(*value["array"])
    return value


def read_gguf(path: Path, shards: Sequence[Path] = ()) -> GGUFInfo:
    """Metadata of ``path``; ``size`` and ``parameters`` count every shard of a split model."""
    version, tensor_count, metadata, parameters = _read_header(path)
    for shard in shards[1:]:
        parameters += _read_header(shard)[3]
    size = sum(p.stat().st_size for p in (shards or [path]))
    return GGUFInfo(
        version=version,
        tensor_count=tensor_count,
        metadata=metadata,
        size=size,
        parameters=parameters,
    )


def _read_header(path: Path) -> tuple[int, int, dict[str, Any], int]:
    try:
        with path.open("rb") as f:
            if f.read(4) != _MAGIC:
                raise GGUFError(f"{path} is not a GGUF file")
            version, tensor_count, kv_count = struct.unpack("<IQQ", _read(f, 20))
            metadata: dict[str, Any] = {}
            for _ in range(kv_count):
                key = _read_string(f)
                (value_type,) = struct.unpack("<I", _read(f, 4))
                metadata[key] = _read_value(f, value_type)
            parameters = 0
            for _ in range(tensor_count):
                (name_length,) = struct.unpack("<Q", _read(f, 8))
                f.seek(name_length, 1)
                (n_dims,) = struct.unpack("<I", _read(f, 4))
                count = 1
                for dim in struct.unpack(f"<{n_dims}Q", _read(f, 8 * n_dims)):
                    count *= dim
                parameters += count
                f.seek(12, 1)  # type (u32) and offset (u64)
    except (OSError, struct.error, UnicodeDecodeError) as exc:
        raise GGUFError(f"cannot read GGUF metadata from {path}: {exc}") from exc
    return version, tensor_count, metadata, parameters


def _read(f: BinaryIO, n: int) -> bytes:
    if n > _MAX_FIELD:
        raise GGUFError(f"damaged GGUF header: a field claims {n} bytes")
    data = f.read(n)
    if len(data) != n:
        raise GGUFError("unexpected end of file in the GGUF header")
    return data


def _read_string(f: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", _read(f, 8))
    return _read(f, length).decode("utf-8", errors="replace")


def _read_value(f: BinaryIO, value_type: int) -> Any:
    if value_type in _SCALARS:
        fmt = _SCALARS[value_type]
        return struct.unpack(fmt, _read(f, struct.calcsize(fmt)))[0]
    if value_type == _STRING:
        return _read_string(f)
    if value_type == _ARRAY:
        item_type, length = struct.unpack("<IQ", _read(f, 12))
        if length <= _KEEP_ARRAY_MAX:
            return [_read_value(f, item_type) for _ in range(length)]
        if item_type in _SCALARS:
            f.seek(length * struct.calcsize(_SCALARS[item_type]), 1)
        elif item_type == _STRING:
            _skip_strings(f, length)
        else:
            for _ in range(length):
                _read_value(f, item_type)
        return ArrayInfo(type=item_type, length=length)
    raise GGUFError(f"unknown GGUF value type {value_type}")


_LENGTH = struct.Struct("<Q")


def _skip_strings(f: BinaryIO, count: int) -> None:
    """Past ``count`` strings, their lengths read from a map of the file: one read and one
    seek each took 0.22 s for a 262k-token vocabulary, this takes 0.06 s."""
    position = f.tell()
    unpack = _LENGTH.unpack_from
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        try:
            for _ in range(count):
                (n,) = unpack(view, position)
                if n > _MAX_FIELD:
                    raise GGUFError(f"damaged GGUF header: a field claims {n} bytes")
                position += 8 + n
        except struct.error:
            position = len(view) + 1
        if position > len(view):
            raise GGUFError("unexpected end of file in the GGUF header")
    f.seek(position)


def _per_layer(value: Any, n_layer: int) -> list[int]:
    if isinstance(value, list):
        return [int(v) for v in value][:n_layer]
    return [int(value)] * n_layer


def _swa_layers(info: GGUFInfo, n_layer: int) -> list[bool]:
    """Which layers use a sliding window (llama.cpp keeps a smaller KV cache for those)."""
    if not info.arch_value("attention.sliding_window"):
        return [False] * n_layer
    pattern = info.arch_value("attention.sliding_window_pattern")
    if isinstance(pattern, list):
        return [bool(v) for v in pattern][:n_layer]
    # llama.cpp hard-codes these periods: every Nth layer is global, the rest slide.
    period = (
        int(pattern)
        if isinstance(pattern, int)
        else {"gemma2": 2, "gemma3": 6}.get(info.architecture, 0)
    )
    if period <= 1:
        return [False] * n_layer
    return [(i + 1) % period != 0 for i in range(n_layer)]


def kv_cache_bytes(info: GGUFInfo, ctx: int, parallel: int) -> int:
    """f16 K and V for ``ctx`` tokens in each of ``parallel`` slots."""
    n_layer = int(info.arch_value("block_count", 0) or 0)
    if n_layer == 0:
        return 0
    n_head = _per_layer(info.arch_value("attention.head_count", 1), n_layer)
    n_head_kv = _per_layer(info.arch_value("attention.head_count_kv", n_head), n_layer)
    n_embd = int(info.arch_value("embedding_length", 0) or 0)
    head_dim = n_embd // max(n_head[0], 1) if n_head[0] else 0
    key_len = int(info.arch_value("attention.key_length", head_dim) or head_dim)
    value_len = int(info.arch_value("attention.value_length", head_dim) or head_dim)
    window = int(info.arch_value("attention.sliding_window", 0) or 0)
    total_cells = ctx * parallel
    swa_cells = min(total_cells, parallel * (window + _UBATCH)) if window else total_cells
    total = 0
    for layer, sliding in enumerate(_swa_layers(info, n_layer)):
        cells = swa_cells if sliding else total_cells
        total += cells * n_head_kv[layer] * (key_len + value_len) * 2
    return total


def compute_bytes(info: GGUFInfo, ctx: int) -> int:
    """The scratch of one full micro-batch (f32): attention scores over a slot's whole
    context, the feed-forward activations and the embedding-sized temporaries.

    llama.cpp reserves this at load but touches it only when a long prompt is processed,
    so a runner measured just after loading does not show it. Gemma-3-270M at 4 x 4096 grew
    by 58 MiB over 811-token prompts with no prompt cache; this gives 54 MiB.
    """
    n_layer = int(info.arch_value("block_count", 0) or 0)
    if n_layer == 0:
        return 0
    n_head = max(_per_layer(info.arch_value("attention.head_count", 1), n_layer) or [1])
    n_embd = int(info.arch_value("embedding_length", 0) or 0)
    n_ff = max(_per_layer(info.arch_value("feed_forward_length", 0) or 0, n_layer) or [0])
    scores = n_head * ctx * _UBATCH
    return 4 * (scores + _UBATCH * (3 * n_ff + 8 * n_embd))


def estimate_parts(info: GGUFInfo, ctx: int, parallel: int) -> dict[str, int]:
    """Weights (the file), KV cache, the output (logits) and compute buffers and the
    engine's own memory, in bytes of RAM on a CPU build."""
    n_vocab_value = info.metadata.get("tokenizer.ggml.tokens")
    n_vocab = n_vocab_value.length if isinstance(n_vocab_value, ArrayInfo) else 32000
    return {
        "weights": info.size,
        "kv_cache": kv_cache_bytes(info, ctx, parallel),
        "output": 4 * n_vocab * (parallel + 16),
        "compute": compute_bytes(info, ctx),
        "engine": _ENGINE_OVERHEAD,
    }


def estimate_bytes(info: GGUFInfo, ctx: int, parallel: int) -> int:
    """``estimate_parts`` in all."""
    return sum(estimate_parts(info, ctx, parallel).values())


CUDA_CONTEXT = 400 * 1024**2
"""What a CUDA process holds on a GPU before any tensor (context, cuBLAS workspace)."""


def split_bytes(info: GGUFInfo, ctx: int, parallel: int, gpu_layers: int) -> tuple[int, int]:
    """``estimate_bytes`` split between RAM and GPU memory for ``gpu_layers`` offloaded
    layers (-1: all), as llama.cpp places them: the repeating layers' weights and KV cache
    go by share of layers, the output layer last (the layer after the repeating ones),
    compute buffers to the GPU once any layer is there; the token embeddings stay in RAM."""
    total = estimate_bytes(info, ctx, parallel)
    n_layer = int(info.arch_value("block_count", 0) or 0)
    if gpu_layers == 0 or n_layer == 0:
        return total, 0
    offloaded = n_layer + 1 if gpu_layers < 0 else min(gpu_layers, n_layer + 1)
    share = min(offloaded, n_layer) / n_layer
    n_vocab_value = info.metadata.get("tokenizer.ggml.tokens")
    n_vocab = n_vocab_value.length if isinstance(n_vocab_value, ArrayInfo) else 32000
    n_embd = int(info.arch_value("embedding_length", 0) or 0)
    per_weight = info.size / info.parameters if info.parameters else 0.5
    embeddings = min(int(n_vocab * n_embd * per_weight), info.size // 2)
    repeating = info.size - 2 * embeddings  # less the token embeddings and the output layer
    weights = int(repeating * share) + (embeddings if offloaded > n_layer else 0)
    kv = int(kv_cache_bytes(info, ctx, parallel) * share)
    moved = weights + kv + compute_bytes(info, ctx)
    return max(total - moved, _ENGINE_OVERHEAD), moved + CUDA_CONTEXT
