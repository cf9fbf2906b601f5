import pytest

from modelyard.errors import HubNotFoundError, InvalidRequestError
from modelyard.hub.ref import Reference, parse_reference, quant_of, select

GGUF_REPO = [
    "README.md",
    ".gitattributes",
    "qwen2.5-0.5b-instruct-q8_0.gguf",
    "qwen2.5-0.5b-instruct-q4_k_m.gguf",
    "qwen2.5-0.5b-instruct-fp16.gguf",
    "qwen2.5-0.5b-instruct-q2_k.gguf",
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Qwen/Qwen2.5-0.5B-Instruct-GGUF", Reference("Qwen/Qwen2.5-0.5B-Instruct-GGUF")),
        ("Qwen/Q-GGUF:Q4_K_M", Reference("Qwen/Q-GGUF", "Q4_K_M")),
        ("hf.co/owner/repo:q8_0", Reference("owner/repo", "q8_0")),
        ("https://huggingface.co/owner/repo@v1.0", Reference("owner/repo", None, "v1.0")),
        ("owner/repo:model.gguf@abc", Reference("owner/repo", "model.gguf", "abc")),
    ],
)
def test_reference_parses_the_forms_users_type(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize("text", ["justaname", "owner/repo:", "a/b/c", "owner/repo@", "/repo"])
def test_reference_rejects_what_is_not_one(text: str) -> None:
    with pytest.raises(InvalidRequestError, match="is not a model reference"):
        parse_reference(text)


@pytest.mark.parametrize(
    ("path", "quant"),
    [
        ("gemma-3-270m-it-Q4_K_M.gguf", "Q4_K_M"),
        ("qwen2.5-0.5b-instruct-q4_k_m.gguf", "Q4_K_M"),
        ("Llama-3.3-70B-Instruct-Q4_K_M-00002-of-00003.gguf", "Q4_K_M"),
        ("Q4_K_M/Big-Model-Q4_K_M-00001-of-00002.gguf", "Q4_K_M"),
        ("model.IQ4_XS.gguf", "IQ4_XS"),
        ("phi-4-BF16.gguf", "BF16"),
        ("Qwen3-8B-UD-Q4_K_XL.gguf", "UD-Q4_K_XL"),
        ("model.gguf", None),
    ],
)
def test_quant_of_reads_the_quantisation_from_the_name(path: str, quant: str | None) -> None:
    assert quant_of(path) == quant


def test_select_gguf_by_quant_any_case() -> None:
    chosen = select(Reference("o/r", "q8_0"), GGUF_REPO)
    assert (chosen.kind, chosen.tag, chosen.files) == (
        "gguf",
        "Q8_0",
        ("qwen2.5-0.5b-instruct-q8_0.gguf",),
    )


def test_select_gguf_default_prefers_q4_k_m() -> None:
    chosen = select(Reference("o/r"), GGUF_REPO)
    assert chosen.tag == "Q4_K_M"
    assert chosen.model == "qwen2.5-0.5b-instruct-q4_k_m.gguf"


def test_select_gguf_by_file_name() -> None:
    chosen = select(Reference("o/r", "qwen2.5-0.5b-instruct-q2_k.gguf"), GGUF_REPO)
    assert chosen.files == ("qwen2.5-0.5b-instruct-q2_k.gguf",)


def test_select_unknown_quant_lists_what_there_is() -> None:
    with pytest.raises(HubNotFoundError, match=r"no GGUF file for 'Q5_K_M'.*FP16, Q2_K, Q4_K_M"):
        select(Reference("o/r", "Q5_K_M"), GGUF_REPO)


def test_select_split_model_takes_every_shard_and_the_projector() -> None:
    files = [
        "mmproj-F16.gguf",
        "mmproj-F32.gguf",
        "Q4_K_M/m-Q4_K_M-00002-of-00003.gguf",
        "Q4_K_M/m-Q4_K_M-00001-of-00003.gguf",
        "Q4_K_M/m-Q4_K_M-00003-of-00003.gguf",
        "m-Q8_0.gguf",
    ]
    chosen = select(Reference("o/r", "Q4_K_M"), files)
    assert chosen.files == (
        "Q4_K_M/m-Q4_K_M-00001-of-00003.gguf",
        "Q4_K_M/m-Q4_K_M-00002-of-00003.gguf",
        "Q4_K_M/m-Q4_K_M-00003-of-00003.gguf",
        "mmproj-F16.gguf",
    )
    assert chosen.model == "Q4_K_M/m-Q4_K_M-00001-of-00003.gguf"


def test_select_incomplete_split_on_the_hub_fails() -> None:
    with pytest.raises(HubNotFoundError, match="incomplete"):
        select(Reference("o/r"), ["m-Q4_K_M-00001-of-00002.gguf"])


def test_select_several_models_for_one_quant_asks_for_the_file() -> None:
    with pytest.raises(InvalidRequestError, match="matches several models"):
        select(Reference("o/r", "Q4_K_M"), ["a-Q4_K_M.gguf", "b-Q4_K_M.gguf"])


def test_select_hf_repo_takes_what_runners_read() -> None:
    files = [
        "README.md",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "1_Pooling/config.json",
        "2_Normalize/.gitkeep",
        "model.safetensors",
        "pytorch_model.bin",
        "tf_model.h5",
        "onnx/model.onnx",
        "onnx/config.json",
        "openvino/openvino_model.xml",
        "images/diagram.png",
    ]
    chosen = select(Reference("o/r"), files)
    assert chosen.kind == "hf"
    assert chosen.model == "."
    assert set(chosen.files) == {
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "1_Pooling/config.json",
        "model.safetensors",
    }


def test_select_hf_repo_without_safetensors_takes_bin_weights() -> None:
    chosen = select(Reference("o/r"), ["config.json", "pytorch_model.bin", "tf_model.h5"])
    assert chosen.files == ("config.json", "pytorch_model.bin")


def test_select_hf_repo_with_a_tag_is_refused() -> None:
    with pytest.raises(HubNotFoundError, match="has no GGUF files"):
        select(Reference("o/r", "Q4_K_M"), ["config.json", "model.safetensors"])
