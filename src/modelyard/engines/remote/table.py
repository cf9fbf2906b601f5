"""A remote server in the catalog: its keys and how an entry becomes a spec."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import Field

from modelyard.catalog.build import served
from modelyard.catalog.engine import CatalogEngine, Place, Table
from modelyard.catalog.entry import ModelEntry, Seconds
from modelyard.catalog.spec import ModelSpec, default

_ELSEWHERE = "not for a remote model (it runs elsewhere)"


class RemoteTable(Table):
    url: str | None = None
    api_key: str | None = None
    """``env:NAME``: the key is read from that environment variable, never from this file."""
    max_concurrency: int | None = Field(default=None, gt=0, le=4096)
    """Requests sent at once (``parallel``)."""
    health: str = "/v1/models"
    health_status: int = Field(default=default("health_status"), ge=100, le=599)
    ready_timeout: Seconds = default("ready_timeout")


class RemoteEntry(CatalogEngine):
    name = "remote"
    Table = RemoteTable
    marker = "url"
    refuses: ClassVar[Mapping[str, str]] = {
        key: _ELSEWHERE for key in ("command", "metrics", "sleep", "sleep_level")
    }

    def resolve(
        self, spec: ModelSpec, entry: ModelEntry, table: RemoteTable, place: Place
    ) -> ModelSpec:
        """An entry served elsewhere (``modelyard.engines.remote.runner``)."""
        if not table.url:
            raise place.error("url", 'required for engine = "remote"')
        url = table.url.rstrip("/").removesuffix("/v1")
        parsed = urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise place.error("url", f"an http(s) URL such as http://host:8000: {table.url!r}")
        if parsed.username or parsed.password:
            raise place.error("url", 'no credentials in the URL; use api_key = "env:NAME"')
        key_env = None
        if table.api_key is not None:
            if not table.api_key.startswith("env:") or not table.api_key[4:]:
                raise place.error(
                    "api_key",
                    '"env:NAME", the environment variable that holds the key (a key is '
                    "never written in this file)",
                )
            key_env = table.api_key[4:]
        given = entry.model_fields_set
        if entry.path:
            raise place.error("path", _ELSEWHERE)
        for key in ("replicas", "max_replicas", "scale_up_wait", "gpus_per_replica", "nodes"):
            if key in given:
                hint = "; raise max_concurrency to send it more at once" if "rep" in key else ""
                raise place.error(key, f"{_ELSEWHERE[:-1]}{hint})")
        if "parallel" in given and table.max_concurrency is not None:
            raise place.error("max_concurrency", "the same as parallel; give one of them")
        return replace(
            spec,
            path=Path(),
            parallel=table.max_concurrency or entry.parallel,
            keep_alive=entry.keep_alive if "keep_alive" in given else None,
            served=served(entry, spec.kind),
            url=url,
            api_key_env=key_env,
            health=table.health,
            health_status=table.health_status,
            ready_timeout=table.ready_timeout,
            memory=None,
            gpu_memory=None,
            gpus=(),
        )

    def settings(self, spec: ModelSpec) -> dict[str, Any]:
        return {
            "url": spec.url,
            "max_concurrency": spec.parallel,
            "upstream_model": spec.upstream_model,
            "api_key": f"env:{spec.api_key_env}" if spec.api_key_env else None,
        }
