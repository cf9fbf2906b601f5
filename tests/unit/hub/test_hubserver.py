"""The loopback hub speaks the hub's protocol: huggingface_hub's own client works against it.

So what ``pull`` is tested against behaves, for the calls it makes, like the real hub.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url

from tests.hubserver import COMMIT, FakeHub
from tests.unit.hub.conftest import gguf_repo


def test_hubserver_serves_huggingface_hub_clients(hub: FakeHub, tmp_path: Path) -> None:
    files = gguf_repo(hub)
    api = HfApi(endpoint=hub.url)
    info = api.model_info("acme/tiny-GGUF", files_metadata=True)
    assert info.sha == COMMIT
    sizes = {s.rfilename: s.size for s in info.siblings or []}
    assert sizes == {name: len(data) for name, data in files.items()}

    tree = {f.path: f for f in api.list_repo_tree("acme/tiny-GGUF", recursive=True)}
    assert set(tree) == set(files)

    url = hf_hub_url("acme/tiny-GGUF", "tiny-Q8_0.gguf", endpoint=hub.url)
    meta = get_hf_file_metadata(url)
    assert (meta.commit_hash, meta.size) == (COMMIT, len(files["tiny-Q8_0.gguf"]))
    assert meta.etag == tree["tiny-Q8_0.gguf"].lfs.sha256  # type: ignore[union-attr]

    path = hf_hub_download("acme/tiny-GGUF", "tiny-Q8_0.gguf", endpoint=hub.url, cache_dir=tmp_path)
    assert Path(path).read_bytes() == files["tiny-Q8_0.gguf"]
