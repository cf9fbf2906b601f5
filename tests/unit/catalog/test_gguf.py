import struct
from pathlib import Path

import pytest

from modelyard.catalog.gguf import ArrayInfo, GGUFError, estimate_bytes, kv_cache_bytes, read_gguf


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def write_gguf(path: Path, kvs: list[tuple[str, int, bytes]], padding: int = 0) -> Path:
    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs))
    for key, vtype, value in kvs:
        out += _str(key) + struct.pack("<I", vtype) + value
    path.write_bytes(out + b"\0" * padding)
    return path


def u32(n: int) -> tuple[int, bytes]:
    return 4, struct.pack("<I", n)


def test_gguf_reads_metadata_and_skips_big_arrays(tmp_path: Path) -> None:
    vocab = struct.pack("<IQ", 8, 5000) + b"".join(_str(f"t{i}") for i in range(5000))
    path = write_gguf(
        tmp_path / "m.gguf",
        [
            ("general.architecture", 8, _str("llama")),
            ("llama.block_count", *u32(2)),
            ("llama.embedding_length", *u32(64)),
            ("llama.attention.head_count", *u32(4)),
            ("llama.attention.head_count_kv", *u32(2)),
            ("tokenizer.ggml.tokens", 9, vocab),
            ("tokenizer.chat_template", 8, _str("{{ messages }}")),
            ("general.quantization_version", *u32(2)),
        ],
        padding=1000,
    )
    info = read_gguf(path)
    assert info.architecture == "llama"
    assert info.arch_value("block_count") == 2
    assert info.metadata["tokenizer.ggml.tokens"] == ArrayInfo(type=8, length=5000)
    assert info.chat_template == "{{ messages }}"
    assert info.metadata["general.quantization_version"] == 2
    # 2 layers x 2 kv heads x (16 + 16) dims x 2 bytes per cell, for 100 x 3 cells
    assert kv_cache_bytes(info, ctx=100, parallel=3) == 2 * 2 * 32 * 2 * 300
    assert estimate_bytes(info, 100, 3) > info.size + kv_cache_bytes(info, 100, 3)


def test_gguf_rejects_other_files(tmp_path: Path) -> None:
    (tmp_path / "x.gguf").write_bytes(b"NOPE" + b"\0" * 30)
    with pytest.raises(GGUFError, match="not a GGUF"):
        read_gguf(tmp_path / "x.gguf")


def test_gguf_rejects_truncated_header(tmp_path: Path) -> None:
    (tmp_path / "x.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 5))
    with pytest.raises(GGUFError, match="end of file"):
        read_gguf(tmp_path / "x.gguf")


def test_gguf_damaged_header_is_an_error_not_a_huge_read(tmp_path: Path) -> None:
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + struct.pack("<Q", 2**62) + b"x")
    with pytest.raises(GGUFError, match="damaged GGUF header"):
        read_gguf(path)


@pytest.mark.parametrize(
    ("vocab", "error"),
    [
        # A vocabulary cut short: its strings run past the end of the file.
        (b"".join(_str(f"t{i}") for i in range(4000)), "end of file"),
        # A string in the vocabulary that claims more than any header holds.
        (_str("a") * 4096 + struct.pack("<Q", 2**40) + _str("b") * 5000, "damaged GGUF header"),
    ],
)
def test_gguf_damaged_vocabulary_is_an_error(tmp_path: Path, vocab: bytes, error: str) -> None:
    array = struct.pack("<IQ", 8, 9000) + vocab
    path = write_gguf(tmp_path / "m.gguf", [("tokenizer.ggml.tokens", 9, array)])
    with pytest.raises(GGUFError, match=error):
        read_gguf(path)


def test_headers_read_once_are_remembered_by_the_next_run_while_the_file_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard.catalog import gguf
    from modelyard.catalog.spec import ModelSpec

    vocab = struct.pack("<IQ", 8, 5000) + b"".join(_str(f"t{i}") for i in range(5000))
    path = write_gguf(
        tmp_path / "m.gguf",
        [("general.architecture", 8, _str("llama")), ("tokenizer.ggml.tokens", 9, vocab),
         ("llama.block_count", *u32(2))],
    )  # fmt: skip
    spec = ModelSpec(name="m", path=path)
    monkeypatch.setattr(gguf, "_read_once", {})
    first = gguf.gguf_info(spec)
    kept = tmp_path / "cache" / "headers.json"
    gguf.keep(kept)

    # The next run: nothing in memory, the header is taken from the file kept, not read.
    monkeypatch.setattr(gguf, "_read_once", {})
    assert gguf.remember(kept) == 1
    reads: list[Path] = []
    real = gguf.read_gguf
    monkeypatch.setattr(gguf, "read_gguf", lambda p, s=(): reads.append(p) or real(p, s))
    assert gguf.gguf_info(spec) == first
    assert reads == []
    # The file changed: read again.
    path.write_bytes(path.read_bytes() + b"\0" * 10)
    assert gguf.gguf_info(spec).metadata["tokenizer.ggml.tokens"] == ArrayInfo(8, 5000)
    assert reads == [path]
    # A damaged file of headers is no headers.
    kept.write_text("{not json")
    assert gguf.remember(kept) == 0


def test_headers_are_written_again_only_when_they_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard.catalog import gguf
    from modelyard.catalog.spec import ModelSpec

    paths = [
        write_gguf(tmp_path / f"{name}.gguf", [("general.architecture", 8, _str("llama"))])
        for name in ("a", "b")
    ]
    monkeypatch.setattr(gguf, "_read_once", {})
    for path in paths:
        gguf.gguf_info(ModelSpec(name=path.stem, path=path))
    kept = tmp_path / "cache" / "headers.json"
    assert gguf.keep(kept)

    # The next start reads nothing new: the file is left as it is.
    monkeypatch.setattr(gguf, "_read_once", {})
    assert gguf.remember(kept) == 2
    for path in paths:
        gguf.gguf_info(ModelSpec(name=path.stem, path=path))
    assert not gguf.keep(kept)
    # A model file gone: its header leaves the file.
    paths[1].unlink()
    assert gguf.keep(kept)
    monkeypatch.setattr(gguf, "_read_once", {})
    assert gguf.remember(kept) == 1
    assert not gguf.keep(kept)


def test_threads_that_want_the_same_header_read_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The estimates read at start and a listing sent meanwhile share each header's read."""
    import threading
    import time

    from modelyard.catalog import gguf
    from modelyard.catalog.spec import ModelSpec

    path = write_gguf(tmp_path / "m.gguf", [("general.architecture", 8, _str("llama"))])
    spec = ModelSpec(name="m", path=path)
    monkeypatch.setattr(gguf, "_read_once", {})
    reads: list[Path] = []
    real = gguf.read_gguf

    def slow(p: Path, s: tuple[Path, ...] = ()) -> gguf.GGUFInfo:
        reads.append(p)
        time.sleep(0.2)  # a 262k-token vocabulary
        return real(p, s)

    monkeypatch.setattr(gguf, "read_gguf", slow)
    seen: list[gguf.GGUFInfo] = []
    threads = [threading.Thread(target=lambda: seen.append(gguf.gguf_info(spec))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reads == [path]
    assert len(seen) == 4
    assert all(info == seen[0] for info in seen)
