"""llama.cpp in the catalog: its keys, how an entry becomes a spec, what its GGUF says."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from modelyard.catalog.details import gguf_details
from modelyard.catalog.discovery import shard_set
from modelyard.catalog.engine import CatalogEngine, Place, Table
from modelyard.catalog.entry import ModelEntry, Size
from modelyard.catalog.gguf import estimate_parts, gguf_info
from modelyard.catalog.spec import ModelSpec
from modelyard.catalog.summary import gguf_summary
from modelyard.catalog.template import BUILTIN_TEMPLATES, model_warnings
from modelyard.workers import flags

if TYPE_CHECKING:
    from modelyard.catalog.details import Details


class LlamaCppTable(Table):
    gpu_layers: int | Literal["auto"] = 0
    """Layers on the GPU (-1: all of them; ``auto``: as many as fit its GPUs' free budget
    when it loads, none when they have no room)."""
    chat_template: str | None = None
    mmproj: str | None = None
    extra_args: list[str] = Field(default_factory=list)
    prompt_cache: Size | None = None
    llama_server: str | None = None


class LlamaCppEntry(CatalogEngine):
    name = "llamacpp"
    Table = LlamaCppTable

    def takes(self, path: Path) -> bool:
        return not path.is_dir()

    def resolve(
        self, spec: ModelSpec, entry: ModelEntry, table: LlamaCppTable, place: Place
    ) -> ModelSpec:
        path = place.path(entry.path)
        if not path.is_file():
            raise place.error("path", f"file not found: {path}")
        mmproj = place.resolve(table.mmproj) if table.mmproj else None
        if mmproj is not None and not mmproj.is_file():
            raise place.error("mmproj", f"file not found: {mmproj}")
        template = table.chat_template
        if template is not None and template.endswith((".jinja", ".j2", ".txt")):
            template_file = place.resolve(template)
            if not template_file.is_file():
                raise place.error("chat_template", f"file not found: {template_file}")
            template = str(template_file)
        binary = table.llama_server or place.server.get("llama_server")
        if not binary:
            try:
                flags.parse(table.extra_args, allow_managed=False)
            except flags.FlagError as exc:
                raise place.error("extra_args", str(exc)) from None
        return replace(
            spec,
            path=path,
            kind=entry.kind or "chat",
            shards=shard_set(path),
            mmproj=mmproj,
            chat_template=template,
            extra_args=tuple(table.extra_args),
            llama_server=place.resolve(binary) if binary else None,
            gpu_layers=table.gpu_layers,
            prompt_cache=table.prompt_cache,
            kv_cache_disk=place.server.get("kv_cache_disk", spec.kv_cache_disk),
            # GPU 0 when layers go to a GPU and none is listed.
            gpus=spec.gpus or ((0,) if table.gpu_layers != 0 else ()),
        )

    def settings(self, spec: ModelSpec) -> dict[str, Any]:
        return {"ctx": spec.ctx, "parallel": spec.parallel, "gpu_layers": spec.gpu_layers}

    def describe(self, spec: ModelSpec) -> dict[str, Any]:
        return gguf_summary(spec)

    def prompt_cache(self, spec: ModelSpec) -> int | None:
        return spec.prompt_cache_bytes

    def estimate_parts(self, spec: ModelSpec) -> dict[str, int]:
        parts = estimate_parts(gguf_info(spec), spec.ctx, spec.parallel)
        parts["prompt_cache"] = spec.prompt_cache_bytes
        if spec.mmproj is not None:
            parts["projector"] = spec.mmproj.stat().st_size
        return parts

    def details(self, spec: ModelSpec) -> Details | None:
        return gguf_details(spec, gguf_info(spec))

    def abilities(self, spec: ModelSpec, template: str) -> set[str]:
        """A Jinja template (not one of llama.cpp's built-in formats) says what it can do."""
        if template in BUILTIN_TEMPLATES:
            return set()
        found = {"tools"} if "tools" in template else set()
        if "enable_thinking" in template or "<think>" in template:
            found.add("thinking")
        return found

    def warnings(self, spec: ModelSpec) -> list[str]:
        return model_warnings(spec)
