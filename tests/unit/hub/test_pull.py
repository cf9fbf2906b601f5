"""``pull`` against the loopback hub in ``tests/hubserver.py``: real HTTP, real files."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from modelyard.catalog.discovery import discover
from modelyard.catalog.manifest import read_manifest
from modelyard.catalog.spec import ModelSpec
from modelyard.errors import (
    ConflictError,
    DiskFullError,
    HubError,
    HubNotFoundError,
    VerificationError,
)
from modelyard.hub.api import Hub
from modelyard.hub.pull import Progress, PullCancelledError, pull, target_dir
from modelyard.hub.ref import parse_reference
from tests.hubserver import COMMIT, FakeHub, Repo
from tests.unit.hub.conftest import MiB, blob, gguf_repo

DEFAULTS = ModelSpec(name="", path=Path())


def test_pull_gguf_by_quant_fetches_that_file_and_its_projector(
    hub: FakeHub, client: Hub, tmp_path: Path
) -> None:
    files = gguf_repo(hub)
    seen: list[Progress] = []
    result = pull(parse_reference("acme/tiny-GGUF:q8_0"), tmp_path, client, seen.append)

    directory = tmp_path / "acme" / "tiny-GGUF"
    assert result.reference == "acme/tiny-GGUF:Q8_0"
    assert result.path == directory / "tiny-Q8_0.gguf"
    assert not result.up_to_date
    assert result.downloaded == len(files["tiny-Q8_0.gguf"]) + len(files["mmproj-tiny-F16.gguf"])
    assert sorted(p.name for p in directory.iterdir()) == [
        ".modelyard-pull.json",
        "mmproj-tiny-F16.gguf",
        "tiny-Q8_0.gguf",
    ]
    assert (directory / "tiny-Q8_0.gguf").read_bytes() == files["tiny-Q8_0.gguf"]
    [record] = read_manifest(directory)
    assert (record.repo, record.tag, record.commit) == ("acme/tiny-GGUF", "Q8_0", COMMIT)
    statuses = [p.status for p in seen]
    assert statuses[0] == "resolving"
    assert statuses[-1] == "success"
    assert "verifying" in statuses
    last = [p for p in seen if p.status == "downloading" and p.file == "tiny-Q8_0.gguf"][-1]
    assert last.completed == last.total == len(files["tiny-Q8_0.gguf"])

    [spec] = discover(tmp_path, DEFAULTS)
    assert spec.name == "tiny-q8_0"
    assert spec.aliases == ("acme/tiny-GGUF:Q8_0", "acme/tiny-GGUF")
    assert spec.mmproj == directory / "mmproj-tiny-F16.gguf"


def test_pull_without_tag_takes_q4_k_m_and_second_quant_shares_the_projector(
    hub: FakeHub, client: Hub, tmp_path: Path
) -> None:
    gguf_repo(hub)
    first = pull(parse_reference("acme/tiny-GGUF"), tmp_path, client)
    assert first.reference == "acme/tiny-GGUF:Q4_K_M"
    second = pull(parse_reference("acme/tiny-GGUF:Q8_0"), tmp_path, client)
    assert second.downloaded == 2 * MiB  # the projector was already there
    specs = {s.name: s for s in discover(tmp_path, DEFAULTS)}
    assert specs["tiny-q4_k_m"].aliases == ("acme/tiny-GGUF:Q4_K_M", "acme/tiny-GGUF")
    assert specs["tiny-q8_0"].aliases == ("acme/tiny-GGUF:Q8_0",)
    assert specs["tiny-q4_k_m"].mmproj == specs["tiny-q8_0"].mmproj is not None


def test_pull_split_model_fetches_every_shard(hub: FakeHub, client: Hub, tmp_path: Path) -> None:
    shards = {f"Q4_K_M/big-Q4_K_M-0000{i}-of-00003.gguf": blob(f"s{i}", MiB + i) for i in (1, 2, 3)}
    hub.state.repos["acme/big-GGUF"] = Repo(
        {**shards, "big-Q8_0.gguf": blob("q8", 10), "mmproj-F16.gguf": blob("p", 2000)}
    )
    pull(parse_reference("acme/big-GGUF:Q4_K_M"), tmp_path, client)
    [spec] = discover(tmp_path, DEFAULTS)
    directory = tmp_path / "acme" / "big-GGUF"
    assert [str(p.relative_to(directory)) for p in spec.shards] == sorted(shards)
    for path in spec.shards:
        assert path.read_bytes() == shards[str(path.relative_to(directory))]
    assert spec.aliases == ("acme/big-GGUF:Q4_K_M", "acme/big-GGUF")
    assert spec.mmproj == directory / "mmproj-F16.gguf"


def test_pull_hf_repo_fetches_only_what_a_runner_needs(
    hub: FakeHub, client: Hub, tmp_path: Path
) -> None:
    files = {
        "config.json": b'{"architectures": ["BertModel"], "hidden_size": 8}',
        "modules.json": b'[{"idx": 0, "name": "0", "path": "", "type": "x"}]',
        "tokenizer.json": b"{}",
        "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
        "model.safetensors": blob("w", 4096),
        "pytorch_model.bin": blob("b", 4096),
        "onnx/model.onnx": blob("o", 4096),
        "README.md": b"hello",
    }
    hub.state.repos["acme/embedder"] = Repo(files)
    result = pull(parse_reference("acme/embedder"), tmp_path, client)
    assert result.reference == "acme/embedder"
    assert result.path == tmp_path / "acme" / "embedder"
    got = sorted(str(p.relative_to(result.path)) for p in result.path.rglob("*") if p.is_file())
    assert got == [
        ".modelyard-pull.json",
        "1_Pooling/config.json",
        "config.json",
        "model.safetensors",
        "modules.json",
        "tokenizer.json",
    ]
    [spec] = discover(tmp_path, DEFAULTS)
    assert (spec.name, spec.kind, spec.engine) == ("embedder", "embedding", "encoder")
    assert spec.aliases == ("acme/embedder",)


def test_pull_resumes_when_the_connection_drops_mid_file(
    hub: FakeHub, client: Hub, tmp_path: Path
) -> None:
    files = gguf_repo(hub)
    hub.state.drop_once["tiny-Q4_K_M.gguf"] = MiB + 7
    result = pull(parse_reference("acme/tiny-GGUF:Q4_K_M"), tmp_path, client)
    gets = hub.state.downloads("tiny-Q4_K_M.gguf")
    assert [g.range for g in gets] == [None, f"bytes={MiB + 7}-"]
    assert result.path.read_bytes() == files["tiny-Q4_K_M.gguf"]


def test_pull_resumes_a_partial_file_left_by_an_earlier_run(
    hub: FakeHub, client: Hub, tmp_path: Path
) -> None:
    files = gguf_repo(hub)
    data = files["tiny-Q4_K_M.gguf"]
    sha = hashlib.sha256(data).hexdigest()[:16]
    part = target_dir(tmp_path, "acme/tiny-GGUF") / ".partial" / f"tiny-Q4_K_M.gguf.{sha}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:2_000_000])
    stale = part.with_name("tiny-Q4_K_M.gguf.0123456789abcdef.part")
    stale.write_bytes(b"an older version of the file")
    assert discover(tmp_path, DEFAULTS) == []  # a partial download is no model
    result = pull(parse_reference("acme/tiny-GGUF:Q4_K_M"), tmp_path, client)
    assert [g.range for g in hub.state.downloads("tiny-Q4_K_M.gguf")] == ["bytes=2000000-"]
    assert result.downloaded == len(data) - 2_000_000 + len(files["mmproj-tiny-F16.gguf"])
    assert result.path.read_bytes() == data
    assert not part.parent.exists()


def test_pull_corrupted_file_fails_and_registers_nothing(
    hub: FakeHub, client: Hub, tmp_path: Path
) -> None:
    gguf_repo(hub)
    hub.state.corrupt.add("tiny-Q8_0.gguf")
    with pytest.raises(VerificationError, match="does not match the hub's checksum"):
        pull(parse_reference("acme/tiny-GGUF:Q8_0"), tmp_path, client)
    directory = tmp_path / "acme" / "tiny-GGUF"
    assert discover(tmp_path, DEFAULTS) == []
    assert read_manifest(directory) == []
    assert not list(directory.rglob("*.gguf.part"))  # the damaged file is gone

    hub.state.corrupt.clear()
    assert pull(parse_reference("acme/tiny-GGUF:Q8_0"), tmp_path, client).path.is_file()


def test_pull_twice_downloads_once(hub: FakeHub, client: Hub, tmp_path: Path) -> None:
    gguf_repo(hub)
    pull(parse_reference("acme/tiny-GGUF:Q8_0"), tmp_path, client)
    manifest = (tmp_path / "acme" / "tiny-GGUF" / ".modelyard-pull.json").read_text()
    again = pull(parse_reference("acme/tiny-GGUF:q8_0"), tmp_path, client)
    assert again.up_to_date
    assert again.downloaded == 0
    assert len(hub.state.downloads("tiny-Q8_0.gguf")) == 1
    assert (tmp_path / "acme" / "tiny-GGUF" / ".modelyard-pull.json").read_text() == manifest


def test_pull_fetches_again_when_the_file_was_deleted(
    hub: FakeHub, client: Hub, tmp_path: Path
) -> None:
    gguf_repo(hub)
    first = pull(parse_reference("acme/tiny-GGUF:Q8_0"), tmp_path, client)
    first.path.unlink()
    assert not pull(parse_reference("acme/tiny-GGUF:Q8_0"), tmp_path, client).up_to_date
    assert first.path.is_file()


def test_pull_checks_free_disk_before_starting(
    hub: FakeHub, client: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf_repo(hub)
    monkeypatch.setattr(
        "modelyard.hub.pull.shutil.disk_usage",
        lambda _: type("U", (), {"free": 10 * MiB})(),
    )
    with pytest.raises(DiskFullError, match="Not enough disk space"):
        pull(parse_reference("acme/tiny-GGUF:Q4_K_M"), tmp_path, client)
    assert hub.state.downloads("tiny-Q4_K_M.gguf") == []


def test_pull_cancelled_keeps_the_partial_file_and_registers_nothing(
    hub: FakeHub, client: Hub, tmp_path: Path
) -> None:
    gguf_repo(hub)
    cancel = threading.Event()

    def progress(p: Progress) -> None:
        if p.status == "downloading":
            cancel.set()

    with pytest.raises(PullCancelledError):
        pull(parse_reference("acme/tiny-GGUF:Q4_K_M"), tmp_path, client, progress, cancel)
    assert discover(tmp_path, DEFAULTS) == []
    [part] = (target_dir(tmp_path, "acme/tiny-GGUF") / ".partial").glob("tiny-Q4_K_M.gguf.*.part")
    assert 0 < part.stat().st_size < 3 * MiB


def test_pull_unknown_repo_or_quant_says_so(hub: FakeHub, client: Hub, tmp_path: Path) -> None:
    gguf_repo(hub)
    with pytest.raises(HubNotFoundError, match="acme/nothing was not found"):
        pull(parse_reference("acme/nothing"), tmp_path, client)
    with pytest.raises(HubNotFoundError, match="no revision 'v9'"):
        pull(parse_reference("acme/tiny-GGUF@v9"), tmp_path, client)
    with pytest.raises(HubNotFoundError, match="it has: Q4_K_M, Q8_0"):
        pull(parse_reference("acme/tiny-GGUF:Q6_K"), tmp_path, client)


def test_pull_offline_uses_what_is_there_and_refuses_the_rest(
    hub: FakeHub, client: Hub, tmp_path: Path
) -> None:
    gguf_repo(hub)
    pull(parse_reference("acme/tiny-GGUF:Q8_0"), tmp_path, client)
    offline = Hub(endpoint=hub.url, offline=True)
    hits = len(hub.state.hits)
    assert pull(parse_reference("acme/tiny-GGUF:Q8_0"), tmp_path, offline).up_to_date
    with pytest.raises(HubError, match="Offline mode"):
        pull(parse_reference("acme/tiny-GGUF:Q4_K_M"), tmp_path, offline)
    assert len(hub.state.hits) == hits


def test_pull_into_a_repo_already_being_pulled_is_refused(
    hub: FakeHub, client: Hub, tmp_path: Path
) -> None:
    import fcntl

    gguf_repo(hub)
    partial = target_dir(tmp_path, "acme/tiny-GGUF") / ".partial"
    partial.mkdir(parents=True)
    with (partial / ".lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ConflictError, match="in progress"):
            pull(parse_reference("acme/tiny-GGUF:Q8_0"), tmp_path, client)


def test_pull_refuses_a_file_path_that_leaves_the_directory(
    hub: FakeHub, client: Hub, tmp_path: Path
) -> None:
    hub.state.repos["acme/evil-GGUF"] = Repo({"../../evil-Q4_K_M.gguf": blob("e", 100)})
    with pytest.raises(HubError, match="unsafe path"):
        pull(parse_reference("acme/evil-GGUF"), tmp_path / "models", client)
    assert not list(tmp_path.rglob("*.gguf"))


def test_pull_download_urls_are_percent_encoded() -> None:
    hub = Hub(endpoint="http://hub.test", offline=False)
    url = hub.url("owner/repo", "0123abc", "sub dir/model #1.gguf")
    assert url == "http://hub.test/owner/repo/resolve/0123abc/sub%20dir/model%20%231.gguf"


def test_pull_hub_unreachable_is_a_hub_error() -> None:
    from modelyard.errors import HubError
    from modelyard.hub.ref import parse_reference
    from modelyard.runners.process import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    hub = Hub(endpoint=endpoint, offline=False, timeout=5)
    with pytest.raises(HubError) as error:
        hub.resolve(parse_reference("owner/repo"))
    # One sentence: where, why in a few words, and what to set; no library's traceback text.
    assert error.value.message == (
        f"cannot reach the hub at {endpoint} (connection refused). Set HF_ENDPOINT to reach a "
        "mirror, or HF_HUB_OFFLINE=1 to use only the models already here"
    )
