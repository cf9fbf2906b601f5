"""The command engine in the catalog: its keys (the program, its placeholders, health and
stop signal) and how an entry becomes a spec (``modelyard.engines.command.runner`` runs it)."""

from __future__ import annotations

import signal
import string
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from modelyard.catalog.build import served
from modelyard.catalog.engine import CatalogEngine, Place, Table
from modelyard.catalog.entry import ModelEntry, Seconds
from modelyard.catalog.spec import ModelSpec, default

PLACEHOLDERS = frozenset({"port", "host", "path", "name", "ctx", "key", "gpu"})


def placeholders(command: Sequence[str]) -> set[str]:
    """The placeholders a command uses (``ValueError`` for a malformed one)."""
    found = set()
    for part in command:
        for _, field, _, _ in string.Formatter().parse(part):
            if field is not None:
                found.add(field)
    return found


def stop_signal(name: str) -> signal.Signals:
    """``SIGTERM``, ``TERM`` or ``15`` (``ValueError`` or ``KeyError`` otherwise)."""
    text = name.strip().upper()
    if text.isdigit():
        return signal.Signals(int(text))
    return signal.Signals[text if text.startswith("SIG") else f"SIG{text}"]


_SLEEP = 'vLLM\'s sleep mode: "vllm serve … --enable-sleep-mode"'


class CommandTable(Table):
    command: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    health: str = default("health")
    metrics: str | None = None
    """The path of its Prometheus metrics (``/metrics``), merged into ours."""
    health_status: int = Field(default=default("health_status"), ge=100, le=599)
    ready_timeout: Seconds = default("ready_timeout")
    stop_signal: str = default("stop_signal")
    stop_timeout: Seconds | None = None
    sleep: bool = False
    """vLLM run with ``--enable-sleep-mode``: an idle runner sleeps (its GPU memory given
    back) instead of stopping, and the next request wakes it."""
    sleep_level: Literal[1, 2] = 1
    """vLLM's sleep level: 1 keeps the weights in RAM (fastest wake), 2 drops them."""


class CommandEntry(CatalogEngine):
    name = "command"
    Table = CommandTable
    marker = "command"
    exclusive: ClassVar[Mapping[str, str]] = {
        "sleep": _SLEEP,
        "sleep_level": _SLEEP,
        "metrics": "llama.cpp's are always merged",
    }

    def resolve(
        self, spec: ModelSpec, entry: ModelEntry, table: CommandTable, place: Place
    ) -> ModelSpec:
        """An entry whose runner is its own ``command`` (``modelyard.engines.command.runner``)."""
        if not table.command:
            raise place.error("command", 'required for engine = "command"')
        try:
            used = placeholders(table.command)
        except ValueError as exc:
            raise place.error("command", str(exc)) from None
        unknown = used - PLACEHOLDERS
        if unknown:
            known = ", ".join(f"{{{p}}}" for p in sorted(PLACEHOLDERS))
            raise place.error(
                "command", f"unknown placeholder {{{sorted(unknown)[0]}}} (known: {known})"
            )
        if "port" not in used:
            raise place.error("command", "must use {port}, the port the server listens on")
        if "path" in used and not entry.path:
            raise place.error("path", "required, the command uses {path}")
        try:
            stop_signal(table.stop_signal)
        except (KeyError, ValueError):
            raise place.error("stop_signal", f"not a signal: {table.stop_signal!r}") from None
        for key in ("health", "metrics"):
            value = getattr(table, key)
            if value is not None and not value.startswith("/"):
                raise place.error(key, f"a path starting with /: {value!r}")
        path = Path()
        if entry.path:
            local = place.resolve(entry.path)
            path = local if local.exists() else Path(entry.path)
        return replace(
            spec,
            path=path,
            served=served(entry, spec.kind),
            command=tuple(table.command),
            env=dict(table.env),
            health=table.health,
            metrics=table.metrics,
            health_status=table.health_status,
            ready_timeout=table.ready_timeout,
            stop_signal=table.stop_signal,
            stop_timeout=table.stop_timeout,
            sleep_level=table.sleep_level if table.sleep else 0,
        )

    def settings(self, spec: ModelSpec) -> dict[str, Any]:
        return {
            "command": list(spec.command),
            "parallel": spec.parallel,
            "upstream_model": spec.upstream_model,
            "health": spec.health,
        }
