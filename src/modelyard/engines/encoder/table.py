"""The encoder in the catalog: its keys, how an entry becomes a spec, what a model directory
says."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from modelyard.catalog.build import encoder_kind
from modelyard.catalog.details import hf_details
from modelyard.catalog.engine import CatalogEngine, Place, Table
from modelyard.catalog.entry import ModelEntry, Seconds
from modelyard.catalog.hf import context_length
from modelyard.catalog.spec import (
    ENCODER_PARALLEL,
    EncoderBackend,
    ModelSpec,
    default,
    encoder_serves,
)
from modelyard.catalog.summary import hf_summary

if TYPE_CHECKING:
    from modelyard.catalog.details import Details


class EncoderTable(Table):
    backend: EncoderBackend = default("backend")
    max_batch: int = Field(default=default("max_batch"), gt=0, le=1024)
    batch_wait: Seconds = default("batch_wait")
    max_batch_tokens: int = Field(default=default("max_batch_tokens"), gt=0)
    bucketing: bool = default("bucketing")
    truncate: bool = False


class EncoderEntry(CatalogEngine):
    name = "encoder"
    Table = EncoderTable
    parallel = ENCODER_PARALLEL

    def takes(self, path: Path) -> bool:
        return path.is_dir()

    def resolve(
        self, spec: ModelSpec, entry: ModelEntry, table: EncoderTable, place: Place
    ) -> ModelSpec:
        path = place.path(entry.path)
        kind = encoder_kind(path, entry.kind, place.where)
        ctx = spec.ctx
        if "ctx" not in entry.model_fields_set:
            try:
                ctx = context_length(path) or ctx
            except (OSError, ValueError) as exc:
                raise place.error("path", f"cannot read {path}: {exc}") from None
        return replace(
            spec,
            path=path,
            kind=kind,
            ctx=ctx,
            served=encoder_serves(kind),
            **table.model_dump(),
        )

    def settings(self, spec: ModelSpec) -> dict[str, Any]:
        return {
            "parallel": spec.parallel,
            "backend": spec.backend,
            "max_batch": spec.max_batch,
            "max_batch_tokens": spec.max_batch_tokens,
            "bucketing": spec.bucketing,
        }

    def describe(self, spec: ModelSpec) -> dict[str, Any]:
        return hf_summary(spec)

    def details(self, spec: ModelSpec) -> Details | None:
        return hf_details(spec)
