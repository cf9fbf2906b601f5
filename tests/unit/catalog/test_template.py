from dataclasses import replace
from pathlib import Path

from modelyard.catalog.spec import ModelSpec
from modelyard.catalog.template import can_call_tools, model_warnings
from modelyard.engines.llamacpp.runner import server_args
from tests.unit.catalog.test_gguf import _str, write_gguf


def spec_of(path: Path, **changes: object) -> ModelSpec:
    return replace(ModelSpec(name="m", path=path), **changes)  # type: ignore[arg-type]


def test_template_a_gguf_without_one_gets_a_warning_with_the_fix(tmp_path: Path) -> None:
    bare = write_gguf(tmp_path / "bare.gguf", [("general.architecture", 8, _str("gemma3"))])
    (warning,) = model_warnings(spec_of(bare))
    assert "bare.gguf has no chat template" in warning
    assert "ChatML" in warning
    assert f'[models.m] path = "{bare}", chat_template = "gemma"' in warning
    unknown = write_gguf(tmp_path / "x.gguf", [("general.architecture", 8, _str("newarch"))])
    assert 'chat_template = "chatml"' in model_warnings(spec_of(unknown))[0]


def test_template_none_when_configured_embedded_or_not_a_chat_model(tmp_path: Path) -> None:
    bare = write_gguf(tmp_path / "bare.gguf", [("general.architecture", 8, _str("llama"))])
    assert model_warnings(spec_of(bare, chat_template="llama3")) == []
    assert model_warnings(spec_of(bare, kind="embedding")) == []
    own = write_gguf(
        tmp_path / "own.gguf",
        [("general.architecture", 8, _str("llama")), ("tokenizer.chat_template", 8, _str("{{x}}"))],
    )
    assert model_warnings(spec_of(own)) == []
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf")
    assert model_warnings(spec_of(broken)) == []  # loading it says why


def test_template_the_ggufs_own_template_runs_as_jinja(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    assert "--jinja" in server_args(spec_of(path), 1234)
    builtin = server_args(spec_of(path, chat_template="llama3"), 1234)
    assert builtin[-3:] == ["--no-jinja", "--chat-template", "llama3"]
    assert not can_call_tools(spec_of(path, chat_template="llama3"))


def test_template_builtin_names_with_a_shipped_jinja_equivalent_run_as_jinja(
    tmp_path: Path,
) -> None:
    """gemma and chatml: the same turns, written in Jinja, so that tools can be called."""
    path = tmp_path / "m.gguf"
    for name in ("gemma", "chatml"):
        spec = spec_of(path, chat_template=name)
        args = server_args(spec, 1234)
        assert args[-3:-1] == ["--jinja", "--chat-template-file"]
        assert Path(args[-1]).name == f"{name}.jinja"
        assert Path(args[-1]).is_file()
        assert can_call_tools(spec)
