"""Chat templates of GGUF models: llama.cpp's built-in formats, and the warning for a model
that has none.

A GGUF usually carries its chat template (Jinja) in ``tokenizer.chat_template``; llama.cpp
uses it. One without a template would be chatted with in ChatML, which the model may never
have seen: its answers then look broken for no visible reason. modelyard says so in the log
when it loads such a model, in ``modelyard ls`` and in ``modelyard show``, with the setting
that fixes it.
"""

from __future__ import annotations

import struct
from pathlib import Path

from modelyard.catalog.gguf import GGUFError, GGUFInfo, gguf_info
from modelyard.catalog.spec import ModelSpec

# llama.cpp's legacy (non-Jinja) chat formats that a catalog may name instead of a file.
BUILTIN_TEMPLATES = frozenset(
    {
        "chatglm3",
        "chatglm4",
        "chatml",
        "command-r",
        "deepseek",
        "deepseek2",
        "deepseek3",
        "exaone3",
        "falcon3",
        "gemma",
        "gigachat",
        "glmedge",
        "granite",
        "llama2",
        "llama2-sys",
        "llama2-sys-bos",
        "llama2-sys-strip",
        "llama3",
        "llama4",
        "megrez",
        "minicpm",
        "mistral-v1",
        "mistral-v3",
        "mistral-v3-tekken",
        "mistral-v7",
        "monarch",
        "openchat",
        "orion",
        "phi3",
        "phi4",
        "rwkv-world",
        "smolvlm",
        "vicuna",
        "vicuna-orca",
        "yandex",
        "zephyr",
    }
)

TEMPLATES = Path(__file__).resolve().parent / "templates"
"""Jinja equivalents of built-in formats, shipped so that models on them can call tools."""


def jinja_file(spec: ModelSpec) -> Path | None:
    """The Jinja template file llama.cpp formats ``spec``'s chats with: the configured file,
    or the shipped equivalent of a built-in format name; ``None``: the GGUF's own template,
    or a built-in format with no Jinja equivalent (llama.cpp's C++ formatter)."""
    name = spec.chat_template
    if not name:
        return None
    if name in BUILTIN_TEMPLATES:
        shipped = TEMPLATES / f"{name}.jinja"
        return shipped if shipped.is_file() else None
    return Path(name)


# The built-in format a model of this GGUF architecture most likely wants.
_LIKELY: dict[str, str] = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "llama": "llama3",
    "llama4": "llama4",
    "qwen2": "chatml",
    "qwen3": "chatml",
    "qwen3moe": "chatml",
    "phi3": "phi3",
    "granite": "granite",
    "deepseek2": "deepseek2",
    "command-r": "command-r",
    "cohere2": "command-r",
    "exaone": "exaone3",
    "minicpm": "minicpm",
}


def template_warning(spec: ModelSpec, info: GGUFInfo) -> str | None:
    """What is wrong with a llama.cpp chat model's template, and how to set one; ``None``
    when it has one (configured or in its GGUF) or chats are not what it serves."""
    if spec.kind != "chat" or spec.chat_template:
        return None
    if info.chat_template:
        return None
    likely = _LIKELY.get(info.architecture, "chatml")
    return (
        f"{spec.path.name} has no chat template, so chats would be formatted as ChatML, which "
        f"this model may not know (answers look broken). Set one in modelyard.toml: "
        f'[models.{spec.name}] path = "{spec.path}", chat_template = "{likely}" (one of '
        f"llama.cpp's built-in formats: chatml, llama3, gemma, phi3, …) or a .jinja file."
    )


def model_warnings(spec: ModelSpec) -> list[str]:
    """What a user should fix about ``spec`` before chatting with it (an unreadable file is
    not one of them: loading it says why)."""
    if spec.kind != "chat" or spec.chat_template:
        return []
    try:
        warning = template_warning(spec, gguf_info(spec))
    except (GGUFError, OSError, ValueError, struct.error):
        return []
    return [warning] if warning else []


def can_call_tools(spec: ModelSpec) -> bool:
    """llama.cpp calls tools only through a Jinja chat template, never a built-in format."""
    return (
        spec.engine != "llamacpp"
        or spec.chat_template not in BUILTIN_TEMPLATES
        or jinja_file(spec) is not None
    )
