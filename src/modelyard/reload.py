"""Keeps the running catalog in step with ``modelyard.toml`` and the models directory.

Every ``reload_interval`` seconds the watcher takes a snapshot (the config file's and every
model file's size and modification time) and compares it with the one last applied. A
change is applied once two snapshots in a row agree, so a file still being copied or
written is not read half-way. ``reload`` (also ``POST /api/reload``, and run after a pull)
applies at once. A config that does not load (bad TOML, an unknown key, a missing model
file) changes nothing: the last good catalog stays and the error is logged and kept.
Settings outside ``[models]`` (host, port, memory) are read at start only.

A service beside the catalog, not an HTTP route: it knows what serves the catalog only as
``Served`` (the scheduler).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from modelyard.catalog.catalog import Catalog, CatalogChange
from modelyard.catalog.manifest import MANIFEST
from modelyard.catalog.spec import ModelSpec
from modelyard.config import Config, Settings, find_config_file, load_config
from modelyard.errors import ConfigError

log = logging.getLogger(__name__)

Snapshot = tuple[tuple[str, int, int], ...]
_MODEL_FILES = ("config.json", "modules.json", MANIFEST)


def snapshot(settings: Settings, models_dir: Path) -> Snapshot:
    """Path, size and mtime of the config file and of every file discovery looks at."""
    entries: list[tuple[str, int, int]] = []
    with contextlib.suppress(ConfigError):
        source = find_config_file(settings)
        if source is not None:
            entries.append(_entry(source))
    for directory, dirs, files in os.walk(models_dir, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.lower().endswith(".gguf") or name in _MODEL_FILES:
                with contextlib.suppress(OSError):
                    entries.append(_entry(Path(directory) / name))
    return tuple(entries)


def _entry(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


class Served(Protocol):
    """What serves the catalog (the scheduler): it learns of a new one through these."""

    async def prepare(self, specs: Iterable[ModelSpec]) -> None: ...

    def update_catalog(self, catalog: Catalog) -> CatalogChange: ...


class Reloader:
    """Owns the current ``Config``; swaps the served catalog when the files change."""

    def __init__(
        self,
        config: Config,
        settings: Settings,
        scheduler: Served,
        preload: Callable[[list[str]], asyncio.Task[None] | None] = lambda _: None,
    ) -> None:
        self.config = config
        self.last_error: str | None = None
        self._settings = settings
        self._scheduler = scheduler
        self._preload = preload
        self._lock = asyncio.Lock()
        self._applied: Snapshot | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def reload(self) -> CatalogChange:
        """Reads the config and the models directory now; ``ConfigError`` if they are broken."""
        loop_time = time.thread_time()  # the event loop's CPU: the files are read in threads
        async with self._lock:
            seen = await asyncio.to_thread(snapshot, self._settings, self.config.models_dir)
            try:
                config = await asyncio.to_thread(load_config, self._settings)
            except ConfigError as exc:
                self.last_error = exc.message
                self._applied = seen  # do not retry the same broken files every interval
                log.error("configuration not reloaded, keeping the last good one:\n%s", exc)
                raise
            self.last_error = None
            self._applied = seen
            if _outside_models(config) != _outside_models(self.config):
                log.warning("settings outside [models] changed; they take effect at restart")
            self.config = replace(self.config, models=config.models, models_dir=config.models_dir)
            await self._scheduler.prepare(config.models)
            change = self._scheduler.update_catalog(Catalog(config.models))
        if change.added or change.removed or change.changed:
            log.info(
                "catalog reloaded: added %s, removed %s, changed %s (event loop: %.0f ms)",
                change.added or "none",
                change.removed or "none",
                change.changed or "none",
                (time.thread_time() - loop_time) * 1000,
            )
        task = self._preload(change.added + change.changed)
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return change

    async def watch(self, interval: float) -> None:
        """Reloads whenever the files change and then hold still for one ``interval``."""
        previous = self._applied = await asyncio.to_thread(
            snapshot, self._settings, self.config.models_dir
        )
        while True:
            await asyncio.sleep(interval)
            current = await asyncio.to_thread(snapshot, self._settings, self.config.models_dir)
            if current != self._applied and current == previous:
                try:
                    await self.reload()
                except ConfigError:
                    pass  # logged; the last good catalog stays
                except Exception:
                    log.exception("reloading the catalog failed")
            previous = current


def _outside_models(config: Config) -> Config:
    return replace(config, models=[], models_dir=Path(), source=None)
