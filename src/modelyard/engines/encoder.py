"""Our encoder worker (sentence-transformers embeddings and cross-encoder rerank)."""

from __future__ import annotations

from modelyard.engines.base import Engine


class Encoder(Engine):
    checks_dimensions = True  # it knows the model's width
    truncates = True
