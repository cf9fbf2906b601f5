"""What to pull: a reference (``owner/repo[:TAG][@REVISION]``) and the files it selects.

A GGUF repository holds many files; ``TAG`` picks one model among them, by quantisation
name (``Q4_K_M``, case-insensitive) or by file name. Without a tag the first quantisation in
``DEFAULT_QUANTS`` that the repository has is chosen, as llama.cpp's ``-hf`` does. All
shards of a split model come together, and a multimodal projector (``mmproj*.gguf``) comes
along when the repository has one.

A repository without GGUF files is a Hugging Face model: only what a runner loads is taken
(config, tokenizer, one format of weights, sentence-transformers module folders), not
ONNX/OpenVINO/TensorFlow exports, original checkpoints or pictures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from modelyard.errors import HubNotFoundError, InvalidRequestError

DEFAULT_QUANTS = (
    "Q4_K_M",
    "Q4_K_S",
    "Q4_0",
    "IQ4_XS",
    "IQ4_NL",
    "Q5_K_M",
    "Q5_K_S",
    "Q5_0",
    "Q6_K",
    "Q8_0",
    "Q3_K_M",
    "Q3_K_L",
    "Q3_K_S",
    "IQ3_M",
    "Q2_K",
    "BF16",
    "F16",
    "F32",
)
"""The quantisation chosen when a GGUF reference names none: the first the repo has."""

# Hugging Face's rules for an ``owner/name`` (``huggingface_hub``'s ``validate_repo_id``):
# letters, digits, ``-``, ``_``, ``.``; no ``--`` or ``..``; not starting or ending with
# ``-`` or ``.``; at most 96 characters a part.
_REPO_PART = re.compile(r"^(?!.*(?:--|\.\.))[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?$")
# A branch, tag or commit: what Git allows in a ref, without anything that leaves a path.
_REVISION = re.compile(r"^(?!.*\.\.)(?!/)(?!.*//)[\w./-]{1,200}(?<![./])$")
_TAG_MAX = 200
_QUANT = re.compile(
    r"(?<![A-Za-z0-9])("
    r"I?Q\d_K_(?:XL|XS|S|M|L)|I?Q\d_K|IQ\d_(?:XXS|XS|NL|S|M)|Q\d_[01]|TQ\d_0|MXFP4(?:_MOE)?"
    r"|UD-[A-Z0-9_]+|BF16|F16|F32|FP16|FP32"
    r")(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)

# Files of a Hugging Face model directory that runners read.
_HF_FILES = re.compile(
    r"^(config\.json|generation_config\.json|preprocessor_config\.json|"
    r"tokenizer(_config)?\.json|special_tokens_map\.json|added_tokens\.json|"
    r"vocab\.(txt|json)|merges\.txt|.*\.model|.*\.tiktoken|chat_template\.(jinja|json)|"
    r"modules\.json|config_sentence_transformers\.json|sentence_bert_config\.json|"
    r".*\.safetensors\.index\.json|pytorch_model\.bin\.index\.json)$"
)
_ST_MODULE_DIR = re.compile(r"^\d+_[A-Za-z]+$")


@dataclass(frozen=True)
class Reference:
    repo: str
    tag: str | None = None
    revision: str = "main"

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        rev = f"@{self.revision}" if self.revision != "main" else ""
        return f"{self.repo}{tag}{rev}"


def parse_reference(text: str) -> Reference:
    """``owner/repo``, ``owner/repo:Q4_K_M``, ``hf.co/owner/repo:file.gguf@rev``, or a URL."""
    value = text.strip()
    for prefix in ("https://huggingface.co/", "http://huggingface.co/", "huggingface.co/"):
        value = value.removeprefix(prefix)
    value = value.removeprefix("hf.co/")
    revision = "main"
    if "@" in value:
        value, revision = value.rsplit("@", 1)
    tag: str | None = None
    if ":" in value:
        value, tag = value.split(":", 1)
    parts = value.split("/")
    if (
        len(parts) != 2
        or not all(_REPO_PART.match(part) for part in parts)
        or not _REVISION.match(revision)
        or tag == ""
        or (tag is not None and (len(tag) > _TAG_MAX or "/" in tag or "\\" in tag))
    ):
        raise InvalidRequestError(
            f"{text!r} is not a model reference; expected owner/repo, owner/repo:QUANT "
            "(for example Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M) or owner/repo@revision",
            param="model",
        )
    return Reference(value, tag, revision)


def quant_of(path: str) -> str | None:
    """The quantisation named in a GGUF file's path (``Q4_K_M``), upper case; ``None`` if none."""
    name = _SHARD.sub(".gguf", path)
    found = _QUANT.findall(name)
    return found[-1].upper() if found else None


@dataclass(frozen=True)
class Selection:
    """The files one reference stands for, in download order."""

    kind: str
    """``gguf`` (``model`` is the first file of the chosen quantisation) or ``hf``."""
    tag: str
    """The quantisation or file chosen (GGUF), ``""`` for a Hugging Face directory."""
    files: tuple[str, ...]
    model: str
    """The path a runner opens: the (first) GGUF file, or ``"."`` for a directory."""


def select(ref: Reference, files: list[str]) -> Selection:
    """The files of ``files`` (a repo listing) that ``ref`` stands for."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf"))
    models = [f for f in ggufs if not _is_projector(f)]
    if models:
        return _select_gguf(ref, models, [f for f in ggufs if _is_projector(f)])
    if ref.tag:
        raise HubNotFoundError(
            f"{ref.repo} has no GGUF files, so the tag {ref.tag!r} selects nothing; "
            f"pull {ref.repo} without a tag",
            param="model",
        )
    return _select_hf(ref, files)


def _is_projector(path: str) -> bool:
    return PurePosixPath(path).name.lower().startswith("mmproj")


def _select_gguf(ref: Reference, models: list[str], projectors: list[str]) -> Selection:
    by_quant: dict[str, list[str]] = {}
    for f in models:
        by_quant.setdefault(quant_of(f) or PurePosixPath(f).name, []).append(f)
    tag = ref.tag
    if tag is None:
        tag = next((q for q in DEFAULT_QUANTS if q in by_quant), sorted(by_quant)[0])
    if tag.lower().endswith(".gguf"):
        chosen = [f for f in models if f == tag or PurePosixPath(f).name == tag]
        chosen = _with_shards(chosen[0], models) if chosen else []
    else:
        chosen = by_quant.get(tag.upper(), [])
        tag = tag.upper()
    if not chosen:
        raise HubNotFoundError(
            f"{ref.repo} has no GGUF file for {tag!r}; it has: {', '.join(sorted(by_quant))}",
            param="model",
        )
    firsts = [f for f in chosen if _is_first_shard(f)]
    if len(firsts) > 1:
        raise InvalidRequestError(
            f"{ref.repo}:{tag} matches several models ({', '.join(firsts)}); "
            "name the file instead, for example "
            f"{ref.repo}:{PurePosixPath(firsts[0]).name}",
            param="model",
        )
    chosen = _with_shards(firsts[0], models)
    projector = _pick_projector(projectors, tag)
    return Selection(
        kind="gguf",
        tag=tag,
        files=tuple(chosen + ([projector] if projector else [])),
        model=chosen[0],
    )


def _is_first_shard(path: str) -> bool:
    match = _SHARD.search(path)
    return match is None or match[1] == "00001"


def _with_shards(first: str, models: list[str]) -> list[str]:
    match = _SHARD.search(first)
    if match is None:
        return [first]
    count = int(match[2])
    stem = first[: match.start()]
    wanted = [f"{stem}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
    present = {f.lower(): f for f in models}
    missing = [w for w in wanted if w.lower() not in present]
    if missing:
        raise HubNotFoundError(f"the split model {first} is incomplete on the hub: no {missing}")
    return [present[w.lower()] for w in wanted]


def _pick_projector(projectors: list[str], tag: str) -> str | None:
    """The projector of the same quantisation, else the most precise one."""
    if not projectors:
        return None
    by_quant = {quant_of(p): p for p in projectors}
    for quant in (tag, "F16", "BF16", "F32", "Q8_0"):
        if quant in by_quant:
            return by_quant[quant]
    return sorted(projectors)[0]


def _select_hf(ref: Reference, files: list[str]) -> Selection:
    chosen = [f for f in files if _is_hf_file(f)]
    weights = [f for f in files if _in_model_dir(f) and f.endswith(".safetensors")]
    if not weights:
        weights = [f for f in files if _in_model_dir(f) and re.search(r"pytorch_model.*\.bin$", f)]
    if "config.json" not in files and "modules.json" not in files:
        raise HubNotFoundError(
            f"{ref.repo} has neither GGUF files nor a config.json: modelyard cannot serve it",
            param="model",
        )
    return Selection(kind="hf", tag="", files=tuple(sorted({*chosen, *weights})), model=".")


def _in_model_dir(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return len(parts) == 1 or (len(parts) == 2 and bool(_ST_MODULE_DIR.match(parts[0])))


def _is_hf_file(path: str) -> bool:
    return _in_model_dir(path) and bool(_HF_FILES.match(PurePosixPath(path).name))
