"""Reads the metadata table of a GGUF file (not its tensors) and estimates its memory needs.

Format (little-endian): ``GGUF``, u32 version, u64 tensor count, u64 key/value count, then
the key/value pairs. Large arrays (the tokenizer's vocabulary) are skipped, keeping their
length, so reading a 260k-token vocabulary costs one pass over its strings and no memory.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

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
_UBATCH = 512


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

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None


def read_gguf(path: Path, shards: Sequence[Path] = ()) -> GGUFInfo:
    """Metadata of ``path``; ``size`` counts every shard of a split model."""
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
    except (OSError, struct.error, UnicodeDecodeError) as exc:
        raise GGUFError(f"cannot read GGUF metadata from {path}: {exc}") from exc
    size = sum(p.stat().st_size for p in (shards or [path]))
    return GGUFInfo(version=version, tensor_count=tensor_count, metadata=metadata, size=size)


def _read(f: BinaryIO, n: int) -> bytes:
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
            for _ in range(length):
                (n,) = struct.unpack("<Q", _read(f, 8))
                f.seek(n, 1)
        else:
            for _ in range(length):
                _read_value(f, item_type)
        return ArrayInfo(type=item_type, length=length)
    raise GGUFError(f"unknown GGUF value type {value_type}")


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


def estimate_bytes(info: GGUFInfo, ctx: int, parallel: int) -> int:
    """Weights (the file) + KV cache + compute buffers, in bytes of RAM on a CPU build."""
    n_vocab_value = info.metadata.get("tokenizer.ggml.tokens")
    n_vocab = n_vocab_value.length if isinstance(n_vocab_value, ArrayInfo) else 32000
    logits = 4 * n_vocab * (parallel + 16)
    return info.size + kv_cache_bytes(info, ctx, parallel) + logits + _ENGINE_OVERHEAD
