from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.catalog.discovery import discover
from modelyard.catalog.spec import ModelSpec
from modelyard.errors import InvalidRequestError
from modelyard.hub import store
from modelyard.hub.api import Hub
from modelyard.hub.pull import pull
from modelyard.hub.ref import parse_reference
from tests.hubserver import FakeHub, Repo
from tests.unit.hub.conftest import blob, gguf_repo

DEFAULTS = ModelSpec(name="", path=Path())


def specs(models_dir: Path) -> dict[str, ModelSpec]:
    return {s.name: s for s in discover(models_dir, DEFAULTS)}


def test_remove_keeps_the_projector_another_quant_uses(
    hub: FakeHub, client: Hub, tmp_path: Path
) -> None:
    gguf_repo(hub)
    pull(parse_reference("acme/tiny-GGUF:Q4_K_M"), tmp_path, client)
    pull(parse_reference("acme/tiny-GGUF:Q8_0"), tmp_path, client)
    directory = tmp_path / "acme" / "tiny-GGUF"

    deleted = store.remove(specs(tmp_path)["tiny-q4_k_m"], tmp_path)
    assert deleted == [directory / "tiny-Q4_K_M.gguf"]
    left = specs(tmp_path)
    assert list(left) == ["tiny-q8_0"]
    assert left["tiny-q8_0"].mmproj == directory / "mmproj-tiny-F16.gguf"
    # The first model pulled is gone: the bare repo name now means the one left.
    assert left["tiny-q8_0"].aliases == ("acme/tiny-GGUF:Q8_0", "acme/tiny-GGUF")

    store.remove(left["tiny-q8_0"], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_remove_hf_directory_takes_it_whole(hub: FakeHub, client: Hub, tmp_path: Path) -> None:
    hub.state.repos["acme/enc"] = Repo(
        {"config.json": b"{}", "modules.json": b"[]", "model.safetensors": blob("w", 2000)}
    )
    pull(parse_reference("acme/enc"), tmp_path, client)
    (tmp_path / "acme" / "enc" / "onnx").mkdir()
    (tmp_path / "acme" / "enc" / "onnx" / "model.onnx").write_bytes(b"export")
    assert len(store.remove(specs(tmp_path)["enc"], tmp_path)) == 5
    assert list(tmp_path.iterdir()) == []


def test_remove_refuses_a_model_that_was_not_pulled(tmp_path: Path) -> None:
    (tmp_path / "mine.gguf").write_bytes(b"GGUF")
    with pytest.raises(InvalidRequestError, match="was not pulled by modelyard"):
        store.remove(specs(tmp_path)["mine"], tmp_path)
    assert (tmp_path / "mine.gguf").is_file()


def test_remove_split_model_in_a_subfolder(hub: FakeHub, client: Hub, tmp_path: Path) -> None:
    shards = {f"Q4_K_M/m-Q4_K_M-0000{i}-of-00002.gguf": blob(f"s{i}", 3000) for i in (1, 2)}
    hub.state.repos["acme/m-GGUF"] = Repo({**shards, "m-Q8_0.gguf": blob("q8", 3000)})
    pull(parse_reference("acme/m-GGUF:Q4_K_M"), tmp_path, client)
    pull(parse_reference("acme/m-GGUF:Q8_0"), tmp_path, client)
    deleted = store.remove(specs(tmp_path)["m-q4_k_m"], tmp_path)
    assert sorted(p.name for p in deleted) == [
        "m-Q4_K_M-00001-of-00002.gguf",
        "m-Q4_K_M-00002-of-00002.gguf",
    ]
    assert not (tmp_path / "acme" / "m-GGUF" / "Q4_K_M").exists()
    assert list(specs(tmp_path)) == ["m-q8_0"]
