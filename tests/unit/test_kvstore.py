"""The store of saved llama.cpp slot states (warm swaps): naming, checks, budget, sweeping.

The files are written here in llama.cpp's layout (its header, then opaque bytes): what the
store reads of them is the header and the bytes' checksum. Saving and restoring through a
real engine is tested in ``tests/integration/test_warm_swaps.py``.
"""

from __future__ import annotations

import struct
from pathlib import Path

from modelyard.catalog.spec import ModelSpec
from modelyard.engines.llamacpp.kvstore import KvStore, Saved, header_tokens, identity


def _state(path: Path, tokens: list[int], payload: bytes = b"kv" * 500) -> None:
    """A file as llama.cpp's slot save writes it."""
    values = [-1, 1, len(tokens), *tokens, 0]
    head = struct.pack("<3I", 0x67677371, 4, len(values))
    path.write_bytes(head + struct.pack(f"<{len(values)}i", *values) + payload)


def _model(tmp_path: Path, name: str = "m", ctx: int = 4096) -> ModelSpec:
    path = tmp_path / f"{name}.gguf"
    if not path.exists():
        path.write_bytes(b"GGUF" + b"\0" * 64)
    return ModelSpec(name=name, path=path, ctx=ctx)


def _save(
    store: KvStore, spec: ModelSpec, tokens: list[int], payload: bytes = b"kv" * 500
) -> Saved:
    name = store.scratch(0)
    _state(store.root / name, tokens, payload)
    saved = store.keep(name, identity(spec), spec, len(tokens), 0.01, 100.0)
    assert saved is not None
    return saved


def test_a_saved_state_is_named_by_its_tokens_and_checked_whole(tmp_path: Path) -> None:
    store = KvStore(tmp_path / "kv")
    spec = _model(tmp_path)
    saved = _save(store, spec, [2, 105, 7, 9])
    assert saved.prefix == [2, 105, 7, 9]
    assert header_tokens(store.root / store.file_name(saved)) == [2, 105, 7, 9]
    assert store.problem(saved) is None
    assert [s.key for s in store.states(identity(spec))] == [saved.key]
    # The same conversation saved again is the same state, not a second one.
    again = _save(store, spec, [2, 105, 7, 9])
    assert again.key == saved.key
    assert len(store.states()) == 1
    assert not list(store.root.glob("saving-*"))


def test_truncated_corrupt_or_foreign_states_are_found_out(tmp_path: Path) -> None:
    store = KvStore(tmp_path / "kv")
    spec = _model(tmp_path)
    truncated = _save(store, spec, [1, 2, 3])
    corrupt = _save(store, spec, [1, 2, 4])
    foreign = _save(store, spec, [1, 2, 5])
    path = store.root / store.file_name(truncated)
    path.write_bytes(path.read_bytes()[:-100])
    path = store.root / store.file_name(corrupt)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    # Another conversation's file, of the same size, under this one's name.
    _state(store.root / store.file_name(foreign), [1, 2, 6])
    assert "truncated" in (store.problem(truncated) or "")
    assert "checksum" in (store.problem(corrupt) or "")
    assert "header" in (store.problem(foreign) or "")


def test_the_identity_changes_with_the_model_file_and_its_context(tmp_path: Path) -> None:
    spec = _model(tmp_path)
    first = identity(spec)
    assert identity(ModelSpec(name="other", path=spec.path, ctx=4096)) == first
    assert identity(_model(tmp_path, ctx=2048)) != first
    spec.path.write_bytes(b"GGUF" + b"\1" * 80)  # the file was replaced
    assert identity(spec) != first


def test_the_budget_keeps_the_most_recently_used(tmp_path: Path) -> None:
    store = KvStore(tmp_path / "kv")
    spec = _model(tmp_path)
    old = _save(store, spec, [1])
    middle = _save(store, spec, [2])
    new = _save(store, spec, [3])
    store.touch(old)  # restored just now: the most recently used
    size = old.bytes
    dropped = store.trim(2 * size)
    assert [s.key for s in dropped] == [middle.key]
    assert {s.key for s in store.states()} == {old.key, new.key}
    assert sum(p.stat().st_size for p in store.root.glob("*.bin")) <= 2 * size
    assert len(store.trim(0)) == 2
    assert not list(store.root.glob("*.bin"))


def test_sweep_and_forget(tmp_path: Path) -> None:
    store = KvStore(tmp_path / "kv")
    kept = _model(tmp_path, "kept")
    gone = _model(tmp_path, "gone")
    stays = _save(store, kept, [1, 2])
    _save(store, gone, [3, 4])
    (store.root / "saving-1-2-0.bin").write_bytes(b"half a save")
    gone.path.unlink()
    assert store.sweep() == 3  # the half-done save, and both files of the model now gone
    assert [s.key for s in store.states()] == [stays.key]
    assert [s.key for s in store.forget(kept.path)] == [stays.key]
    assert not list(store.root.glob("*.bin"))
    assert not list(store.root.glob("*.json"))


def test_what_a_setup_restores_is_remembered(tmp_path: Path) -> None:
    store = KvStore(tmp_path / "kv")
    store.root.mkdir()
    assert store.reuses("a") is None
    store.found_reuse("a", False)
    store.found_reuse("b", True)
    assert (store.reuses("a"), store.reuses("b")) == (False, True)
