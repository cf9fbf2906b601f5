"""``backend = "auto"``: the faster backend by a measured probe, remembered per machine."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from modelyard.workers import encoder_choice, encoder_model
from modelyard.workers.encoder_choice import (
    PROBE,
    Choice,
    choice_key,
    faster,
    probe_items,
    remember,
    remembered,
    time_probe,
)


def test_faster_is_the_least_time_and_onnx_on_a_tie() -> None:
    assert faster({"torch": 0.28, "onnx": 0.32}) == "torch"
    assert faster({"onnx": 0.25, "torch": 0.30}) == "onnx"
    assert faster({"torch": 0.3, "onnx": 0.3}) == "onnx"
    assert faster({"torch": 0.3}) == "torch"


def test_probe_items_are_texts_or_pairs_of_the_probe_sizes() -> None:
    texts = probe_items("embedding")
    assert [len(batch) for batch in texts] == [n for n, _ in PROBE]
    assert [len(batch[0].split()) for batch in texts] == [w for _, w in PROBE]
    pairs = probe_items("rerank")
    assert [len(batch) for batch in pairs] == [n for n, _ in PROBE]
    query, document = pairs[2][0]
    assert len(query.split()) == 8
    assert document == texts[2][0]


def test_time_probe_sums_each_batch_at_its_fastest() -> None:
    calls: list[int] = []

    def compute(items: list[Any]) -> Sequence[Any]:
        calls.append(len(items))
        # The first (untimed) pass is slow, as a session's first calls are.
        time.sleep(0.001 * len(items) * (5 if len(calls) <= len(PROBE) else 1))
        return items

    seconds = time_probe(compute, "embedding")
    inputs = sum(n for n, _ in PROBE)
    assert 0.001 * inputs <= seconds < 0.004 * inputs
    assert calls == [n for n, _ in PROBE] * 3  # one untimed pass, two timed


def test_time_probe_times_a_slow_model_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoder_choice, "_SLOW_PASS", 0.0)
    calls: list[int] = []

    def compute(items: list[Any]) -> Sequence[Any]:
        calls.append(len(items))
        return items

    time_probe(compute, "rerank")
    assert calls == [n for n, _ in PROBE] * 2  # one untimed pass, one timed


def _model(tmp_path: Path) -> Path:
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"x" * 100)
    (path / "onnx").mkdir()  # the export written beside it changes nothing
    return path


def test_choice_key_follows_the_files_kind_and_threads(tmp_path: Path) -> None:
    path = _model(tmp_path)
    key = choice_key(path, "embedding", 2)
    assert choice_key(path, "embedding", 2) == key
    (path / "onnx" / "model.onnx").write_bytes(b"exported")
    assert choice_key(path, "embedding", 2) == key
    assert choice_key(path, "rerank", 2) != key
    assert choice_key(path, "embedding", 1) != key
    (path / "model.safetensors").write_bytes(b"y" * 101)
    assert choice_key(path, "embedding", 2) != key


def test_a_choice_is_remembered_whole_or_not_at_all(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    assert remembered(cache, "k") is None
    remember(cache, "k", Choice("torch", {"torch": 0.2, "onnx": 0.3}))
    assert remembered(cache, "k") == "torch"
    assert remembered(cache, "other") is None
    assert remembered(None, "k") is None
    record = cache / "backends" / "k.json"
    for broken in ("{not json", '{"backend": "tpu"}', "[]", ""):
        record.write_text(broken)
        assert remembered(cache, "k") is None
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with caplog.at_level(logging.WARNING, "modelyard.encoder"):
        remember(not_a_directory, "k", Choice("onnx", {}))
    assert "cannot keep the backend choice" in caplog.text


class _Fake:
    """A model whose batches take ``per_item`` seconds an input."""

    kind = "embedding"
    lanes = 1

    def __init__(self, backend: str, per_item: float) -> None:
        self.backend = backend
        self.per_item = per_item

    def compute(self, items: list[Any]) -> list[Any]:
        time.sleep(self.per_item * len(items))
        return items


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The backends ``encoder_model`` loads, in order (fakes: ONNX slower than torch, and no
    glibc tuning)."""
    loaded: list[str] = []
    speed = {"torch": 0.0002, "onnx": 0.0006}

    def fake_load(path: Path, kind: str, backend: str, threads: int, cache: Path | None) -> Any:
        loaded.append(backend)
        if backend == "onnx" and (path / "broken").exists():
            raise RuntimeError("the export failed")
        return _Fake(backend, speed[backend])

    monkeypatch.setattr(encoder_model, "_load", fake_load)
    monkeypatch.setattr(encoder_model, "_libc", lambda: None)
    monkeypatch.setattr(encoder_choice, "_PASSES", 1)
    return loaded


def test_auto_runs_the_faster_backend_and_remembers_it(
    tmp_path: Path, loads: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    path, cache = _model(tmp_path), tmp_path / "cache"
    with caplog.at_level(logging.INFO, "modelyard.encoder"):
        model, backend = encoder_model.load(path, "embedding", "auto", 2, cache)
    assert (backend, getattr(model, "backend", None)) == ("torch", "torch")
    assert loads == ["torch", "onnx", "torch"]  # one at a time; the faster loaded again
    assert "auto backend: torch (the probe took onnx" in caplog.text
    loads.clear()
    model, backend = encoder_model.load(path, "embedding", "auto", 2, cache)
    assert backend == "torch"
    assert loads == ["torch"]  # remembered: nothing measured, one backend loaded
    model, backend = encoder_model.load(path, "embedding", "onnx", 2, cache)
    assert backend == "onnx"  # a backend named in the catalog is never second-guessed


def test_auto_keeps_onnx_loaded_when_it_is_faster(
    tmp_path: Path, loads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encoder_choice, "faster", lambda seconds: "onnx")
    model, backend = encoder_model.load(_model(tmp_path), "embedding", "auto", 2, None)
    assert (backend, getattr(model, "backend", None)) == ("onnx", "onnx")
    assert loads == ["torch", "onnx"]


def test_auto_runs_torch_where_onnx_fails_and_tries_again_next_load(
    tmp_path: Path, loads: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    path, cache = _model(tmp_path), tmp_path / "cache"
    (path / "broken").write_text("")
    with caplog.at_level(logging.WARNING, "modelyard.encoder"):
        _, backend = encoder_model.load(path, "embedding", "auto", 2, cache)
    assert backend == "torch"
    assert "does not run on ONNX Runtime (the export failed): running it on torch" in caplog.text
    assert not (cache / "backends").exists()  # a failure is not a measurement
    (path / "broken").unlink()
    loads.clear()
    encoder_model.load(path, "embedding", "auto", 2, cache)
    assert loads == ["torch", "onnx", "torch"]


def test_a_remembered_onnx_that_no_longer_loads_runs_on_torch(
    tmp_path: Path, loads: list[str]
) -> None:
    path, cache = _model(tmp_path), tmp_path / "cache"
    (path / "broken").write_text("")
    remember(cache, choice_key(path, "embedding", 2), Choice("onnx", {}))
    _, backend = encoder_model.load(path, "embedding", "auto", 2, cache)
    assert backend == "torch"
    assert loads == ["onnx", "torch"]


def test_time_probe_splits_each_batch_over_the_lanes() -> None:
    calls: list[int] = []
    threads: set[int] = set()
    lock = threading.Lock()

    def compute(items: list[Any]) -> Sequence[Any]:
        with lock:
            calls.append(len(items))
            threads.add(threading.get_ident())
        return items

    time_probe(compute, "embedding", lanes=2)
    split = [part for n, _ in PROBE for part in ([n] if n == 1 else [n // 2, n // 2])]
    assert sorted(calls) == sorted(split * 3)
    assert threading.get_ident() not in threads  # on the lanes, not the caller's thread
