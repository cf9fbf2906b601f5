"""Every llama-server flag the table knows reaches xllamacpp's ``CommonParams``."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.workers import flags

x = pytest.importorskip("xllamacpp")

SAMPLE = {"int": "7", "float": "0.5", "str": "text", "floats": "3,1", "ggml_type": "q8_0"}


def _resolve(path: str) -> tuple[object, str]:
    owner, _, attr = path.rpartition(".")
    target: object = x.CommonParams()
    for part in owner.split(".") if owner else []:
        target = getattr(target, part)
    return target, attr


@pytest.mark.parametrize("flag", flags.FLAGS, ids=lambda f: f.names[0])
def test_flags_every_row_names_a_real_field(flag: flags.Flag) -> None:
    target, attr = _resolve(flag.path)
    assert hasattr(target, attr), f"{flag.names} -> {flag.path}: no such field"
    for member in flag.choices.values():
        enum, name = member.split(".")
        assert hasattr(getattr(x, enum), name), member
    if flag.kind == "ggml_type":
        for name in flags.GGML_TYPES:
            assert hasattr(x.ggml_type, f"GGML_TYPE_{name.upper()}")


@pytest.mark.parametrize("flag", flags.FLAGS, ids=lambda f: f.names[0])
def test_flags_every_row_sets_its_field(flag: flags.Flag, tmp_path: Path) -> None:
    from modelyard.workers.llamacpp import build_params

    value = SAMPLE.get(flag.kind)
    if flag.kind == "choice":
        value = next(iter(flag.choices))
    elif flag.kind in ("list", "add"):
        value = "one"
    elif flag.kind == "file":
        (tmp_path / "t.jinja").write_text("{{ messages }}")
        value = str(tmp_path / "t.jinja")
    argv = [flag.names[-1]] + ([value] if flag.takes_value and value is not None else [])
    params = build_params(argv)
    _, attr = _resolve(flag.path)
    owner = flag.path.rpartition(".")[0]
    target: object = params
    for part in owner.split(".") if owner else []:
        target = getattr(target, part)
    got = getattr(target, attr)
    if flag.kind in ("on", "off", "rerank"):
        assert got is (flag.kind != "off")
    elif flag.kind == "floats":
        assert list(got)[:3] == [3.0, 1.0, 0.0]
    elif flag.kind == "file":
        assert got == "{{ messages }}"
    elif flag.kind == "add":
        assert "one" in got
    elif flag.kind == "list":
        assert list(got) == ["one"]
    elif flag.kind == "str":
        assert got == value
    elif flag.kind in ("int", "float"):
        assert float(got) == float(value or 0)
    elif flag.kind == "choice":
        enum, member = flag.choices[value or ""].split(".")
        assert got == getattr(getattr(x, enum), member)
    else:
        assert got == x.ggml_type.GGML_TYPE_Q8_0


def test_flags_equals_form_and_errors_name_the_flag() -> None:
    parsed = flags.parse(["--temp=0.2", "-fa", "on", "--jinja"])
    assert [(f.names[0], v) for f, v in parsed] == [
        ("--temp", "0.2"),
        ("-fa", "on"),
        ("--jinja", None),
    ]
    for argv, words in [
        (["--bogus"], "unknown llama-server flag '--bogus'"),
        (["--temp"], "'--temp' needs a value"),
        (["--top-k", "many"], "'--top-k' takes a number"),
        (["-fa", "maybe"], "'-fa' takes one of on, off, auto"),
        (["-ctk", "q3"], "'-ctk' takes one of"),
        (["--jinja=1"], "'--jinja' takes no value"),
    ]:
        with pytest.raises(flags.FlagError, match=words):
            flags.parse(argv)
    with pytest.raises(flags.FlagError, match="set by modelyard"):
        flags.parse(["--ctx-size", "8192"], allow_managed=False)
