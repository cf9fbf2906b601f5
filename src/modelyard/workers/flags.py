"""llama-server's flags, as the bundled engine (xllamacpp's ``CommonParams``) takes them.

One table serves two places: the config loader checks a model's ``extra_args`` against it
(an unknown flag, a missing or malformed value, or a flag modelyard sets itself is refused
when the config is read, naming the flag), and the llama.cpp worker
(``modelyard.workers.llamacpp``) applies the very same argv to ``CommonParams``. A test
checks every row against the installed xllamacpp.

A user's own ``llama-server`` binary may know flags this table does not; its
``extra_args`` are passed on unchecked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal[
    "int",  # an integer
    "float",  # a number
    "str",  # a string
    "on",  # no value: sets True
    "off",  # no value: sets False
    "choice",  # one of ``choices``: an enum member of xllamacpp
    "ggml_type",  # a tensor type (f16, q8_0 …): a ``ggml_type`` member
    "floats",  # comma-separated numbers (``--tensor-split 3,1``), padded to the field's length
    "file",  # a path: the field takes the file's text
    "list",  # the field is a list of one value
    "add",  # the field is a set; each use adds a value
    "rerank",  # no value: embeddings with rank pooling
]

_VALUELESS = frozenset({"on", "off", "rerank"})
GGML_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")


@dataclass(frozen=True)
class Flag:
    names: tuple[str, ...]
    path: str
    """Dotted path on ``CommonParams``: ``n_ctx``, ``sampling.temp``, ``cpuparams.n_threads``."""
    kind: Kind
    choices: Mapping[str, str] = field(default_factory=dict)
    """Value → ``enum.MEMBER`` of xllamacpp, for ``choice``."""
    managed: bool = False
    """Set by modelyard from the catalog entry; ``extra_args`` may not set it."""

    @property
    def takes_value(self) -> bool:
        return self.kind not in _VALUELESS


_FA = "llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_"
_POOL = "llama_pooling_type.LLAMA_POOLING_TYPE_"
_SPLIT = "llama_split_mode.LLAMA_SPLIT_MODE_"
_ROPE = "llama_rope_scaling_type.LLAMA_ROPE_SCALING_TYPE_"
_REASON = "common_reasoning_format.COMMON_REASONING_FORMAT_"
_NUMA = "ggml_numa_strategy.GGML_NUMA_STRATEGY_"

FLAGS: tuple[Flag, ...] = (
    # Set by modelyard from the catalog entry (path, ctx, parallel, aliases, …).
    Flag(("-m", "--model"), "model.path", "str", managed=True),
    Flag(("--host",), "hostnames", "list", managed=True),
    Flag(("--port",), "port", "int", managed=True),
    Flag(("-c", "--ctx-size"), "n_ctx", "int", managed=True),
    Flag(("-np", "--parallel"), "n_parallel", "int", managed=True),
    Flag(("-a", "--alias"), "model_alias", "add", managed=True),
    Flag(("--api-key",), "api_keys", "list", managed=True),
    Flag(("--mmproj", "-mm"), "mmproj.path", "str", managed=True),
    Flag(("-cram", "--cache-ram"), "cache_ram_mib", "int", managed=True),
    Flag(("--chat-template",), "chat_template", "str", managed=True),
    Flag(("--slot-save-path",), "slot_save_path", "str", managed=True),
    Flag(("--chat-template-file",), "chat_template", "file", managed=True),
    Flag(("--embedding", "--embeddings"), "embedding", "on"),
    Flag(("--reranking", "--rerank"), "embedding", "rerank"),
    # Everything a catalog's extra_args may add.
    Flag(("-ngl", "--n-gpu-layers", "--gpu-layers"), "n_gpu_layers", "int"),
    Flag(("-t", "--threads"), "cpuparams.n_threads", "int"),
    Flag(("-tb", "--threads-batch"), "cpuparams_batch.n_threads", "int"),
    Flag(("--threads-http",), "n_threads_http", "int"),
    Flag(("-b", "--batch-size"), "n_batch", "int"),
    Flag(("-ub", "--ubatch-size"), "n_ubatch", "int"),
    Flag(("-n", "--n-predict", "--predict"), "n_predict", "int"),
    Flag(("--keep",), "n_keep", "int"),
    Flag(("-to", "--timeout"), "timeout_read", "int"),
    Flag(("--cache-reuse",), "n_cache_reuse", "int"),
    Flag(("--ctx-checkpoints", "--swa-checkpoints"), "n_ctx_checkpoints", "int"),
    Flag(("-sps", "--slot-prompt-similarity"), "slot_prompt_similarity", "float"),
    Flag(("-mg", "--main-gpu"), "main_gpu", "int"),
    Flag(("-ts", "--tensor-split"), "tensor_split", "floats"),
    Flag(("--rope-freq-base",), "rope_freq_base", "float"),
    Flag(("--rope-freq-scale",), "rope_freq_scale", "float"),
    Flag(("--yarn-orig-ctx",), "yarn_orig_ctx", "int"),
    Flag(("--yarn-ext-factor",), "yarn_ext_factor", "float"),
    Flag(("--yarn-attn-factor",), "yarn_attn_factor", "float"),
    Flag(("--yarn-beta-slow",), "yarn_beta_slow", "float"),
    Flag(("--yarn-beta-fast",), "yarn_beta_fast", "float"),
    Flag(("-gan", "--grp-attn-n"), "grp_attn_n", "int"),
    Flag(("-gaw", "--grp-attn-w"), "grp_attn_w", "int"),
    Flag(("-ctk", "--cache-type-k"), "cache_type_k", "ggml_type"),
    Flag(("-ctv", "--cache-type-v"), "cache_type_v", "ggml_type"),
    Flag(("-s", "--seed"), "sampling.seed", "int"),
    Flag(("--temp",), "sampling.temp", "float"),
    Flag(("--top-k",), "sampling.top_k", "int"),
    Flag(("--top-p",), "sampling.top_p", "float"),
    Flag(("--min-p",), "sampling.min_p", "float"),
    Flag(("--typical",), "sampling.typ_p", "float"),
    Flag(("--xtc-probability",), "sampling.xtc_probability", "float"),
    Flag(("--xtc-threshold",), "sampling.xtc_threshold", "float"),
    Flag(("--repeat-last-n",), "sampling.penalty_last_n", "int"),
    Flag(("--repeat-penalty",), "sampling.penalty_repeat", "float"),
    Flag(("--presence-penalty",), "sampling.penalty_present", "float"),
    Flag(("--frequency-penalty",), "sampling.penalty_freq", "float"),
    Flag(("--dry-multiplier",), "sampling.dry_multiplier", "float"),
    Flag(("--dry-base",), "sampling.dry_base", "float"),
    Flag(("--dry-allowed-length",), "sampling.dry_allowed_length", "int"),
    Flag(("--dry-penalty-last-n",), "sampling.dry_penalty_last_n", "int"),
    Flag(("--dynatemp-range",), "sampling.dynatemp_range", "float"),
    Flag(("--dynatemp-exp",), "sampling.dynatemp_exponent", "float"),
    Flag(("--mirostat",), "sampling.mirostat", "int"),
    Flag(("--mirostat-lr",), "sampling.mirostat_eta", "float"),
    Flag(("--mirostat-ent",), "sampling.mirostat_tau", "float"),
    Flag(("--min-keep",), "sampling.min_keep", "int"),
    Flag(("--grammar",), "sampling.grammar.grammar", "str"),
    Flag(("--ignore-eos",), "sampling.ignore_eos", "on"),
    Flag(("--reasoning-budget",), "sampling.reasoning_budget_tokens", "int"),
    Flag(("--slots",), "endpoint_slots", "on"),
    Flag(("--no-slots",), "endpoint_slots", "off"),
    Flag(("--metrics",), "endpoint_metrics", "on"),
    Flag(("--props",), "endpoint_props", "on"),
    Flag(("--jinja",), "use_jinja", "on"),
    Flag(("--no-jinja",), "use_jinja", "off"),
    Flag(("--no-warmup",), "warmup", "off"),
    Flag(("--warmup",), "warmup", "on"),
    Flag(("--no-cache-prompt",), "cache_prompt", "off"),
    Flag(("--cache-prompt",), "cache_prompt", "on"),
    Flag(("--swa-full",), "swa_full", "on"),
    Flag(("-nkvo", "--no-kv-offload"), "no_kv_offload", "on"),
    Flag(("-kvu", "--kv-unified"), "kv_unified", "on"),
    Flag(("--context-shift",), "ctx_shift", "on"),
    Flag(("--no-context-shift",), "ctx_shift", "off"),
    Flag(("-cb", "--cont-batching"), "cont_batching", "on"),
    Flag(("-nocb", "--no-cont-batching"), "cont_batching", "off"),
    Flag(("--no-mmproj",), "no_mmproj", "on"),
    Flag(("--no-mmproj-offload",), "mmproj_use_gpu", "off"),
    Flag(("--check-tensors",), "check_tensors", "on"),
    Flag(("--special", "-sp"), "special", "on"),
    Flag(
        ("-fa", "--flash-attn"),
        "flash_attn_type",
        "choice",
        {"on": _FA + "ENABLED", "off": _FA + "DISABLED", "auto": _FA + "AUTO"},
    ),
    Flag(
        ("--pooling",),
        "pooling_type",
        "choice",
        {v: _POOL + v.upper() for v in ("none", "mean", "cls", "last", "rank")},
    ),
    Flag(
        ("-sm", "--split-mode"),
        "split_mode",
        "choice",
        {v: _SPLIT + v.upper() for v in ("none", "layer", "row")},
    ),
    Flag(
        ("--rope-scaling",),
        "rope_scaling_type",
        "choice",
        {v: _ROPE + v.upper() for v in ("none", "linear", "yarn", "longrope")},
    ),
    Flag(
        ("--reasoning-format",),
        "reasoning_format",
        "choice",
        {
            "none": _REASON + "NONE",
            "auto": _REASON + "AUTO",
            "deepseek": _REASON + "DEEPSEEK",
            "deepseek-legacy": _REASON + "DEEPSEEK_LEGACY",
        },
    ),
    Flag(
        ("--numa",),
        "numa",
        "choice",
        {
            "distribute": _NUMA + "DISTRIBUTE",
            "isolate": _NUMA + "ISOLATE",
            "numactl": _NUMA + "NUMACTL",
        },
    ),
)

BY_NAME: Mapping[str, Flag] = {name: flag for flag in FLAGS for name in flag.names}


class FlagError(ValueError):
    """An argv the table cannot take; the message names the flag."""


def parse(argv: Sequence[str], *, allow_managed: bool = True) -> list[tuple[Flag, str | None]]:
    """The flags of ``argv`` with their values (``--flag value`` or ``--flag=value``),
    checked: known, with a value of the right form, and not one modelyard sets itself
    (unless ``allow_managed``)."""
    out: list[tuple[Flag, str | None]] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name, eq, inline = token.partition("=") if token.startswith("--") else (token, "", "")
        flag = BY_NAME.get(name)
        if flag is None:
            raise FlagError(f"unknown llama-server flag {name!r}")
        if flag.managed and not allow_managed:
            raise FlagError(
                f"{name!r} is set by modelyard from the model's entry (path, ctx, parallel, "
                "aliases, mmproj, chat_template, prompt_cache); set it there instead"
            )
        value: str | None = None
        if flag.takes_value:
            if eq:
                value = inline
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise FlagError(f"{name!r} needs a value")
            _check(name, flag, value)
        elif eq:
            raise FlagError(f"{name!r} takes no value")
        out.append((flag, value))
        i += 1
    return out


def _check(name: str, flag: Flag, value: str) -> None:
    try:
        if flag.kind == "int":
            int(value)
        elif flag.kind == "float":
            float(value)
        elif flag.kind == "floats":
            [float(v) for v in value.split(",")]
    except ValueError:
        raise FlagError(f"{name!r} takes a number, not {value!r}") from None
    if flag.kind == "choice" and value not in flag.choices:
        raise FlagError(f"{name!r} takes one of {', '.join(flag.choices)}, not {value!r}")
    if flag.kind == "ggml_type" and value.lower() not in GGML_TYPES:
        raise FlagError(f"{name!r} takes one of {', '.join(GGML_TYPES)}, not {value!r}")
