"""The memory budget per device, and measured footprints remembered across restarts."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, MutableMapping
from pathlib import Path

import psutil

from modelyard.catalog.spec import Footprint
from modelyard.quantity import parse_size

log = logging.getLogger(__name__)


def resolve_budget(ram: str | int) -> dict[str, int]:
    """Bytes per device; a percentage is of the RAM available now (not of the total)."""
    return {"ram": parse_size(ram, total=psutil.virtual_memory().available)}


class MeasuredFootprints(MutableMapping[str, Footprint]):
    """A dict of measured footprints by model+settings key, saved as JSON by ``flush`` (the
    scheduler flushes from a thread after it measures, and when it closes)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._dirty = False
        self._data: dict[str, Footprint] = {}
        with contextlib.suppress(FileNotFoundError):
            try:
                raw = json.loads(path.read_text())
                self._data = {
                    str(k): {str(d): int(n) for d, n in v.items()} for k, v in raw.items()
                }
            except (ValueError, AttributeError, TypeError) as exc:
                log.warning("ignoring unreadable %s: %s", path, exc)

    def __getitem__(self, key: str) -> Footprint:
        return self._data[key]

    def __setitem__(self, key: str, value: Footprint) -> None:
        if self._data.get(key) == value:
            return
        self._data[key] = dict(value)
        self._dirty = True

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        self._dirty = True

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def flush(self) -> None:
        """Writes the file if anything changed since the last write."""
        if not self._dirty:
            return
        self._dirty = False
        text = json.dumps(dict(self._data), indent=1, sort_keys=True)
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._path.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, self._path)
        except OSError as exc:
            log.warning("cannot save %s: %s", self._path, exc)
