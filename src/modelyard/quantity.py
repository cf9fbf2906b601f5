"""Durations and byte sizes as people write them in config files and requests."""

from __future__ import annotations

import math
import re

FOREVER_AFTER = 100 * 365 * 86400.0
"""Durations this long or longer mean forever: no timer or clock can represent much more."""

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNIT = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}


def parse_duration(value: str | float | int) -> float | None:
    """Seconds from Ollama's ``keep_alive`` forms; ``None`` means forever.

    Accepts a number of seconds or a Go-style duration (``"5m"``, ``"1h30m"``, ``"250ms"``).
    Any negative value means forever, and so does anything of ``FOREVER_AFTER`` (a century)
    or more; ``0`` means now.
    """
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '5m'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower()
        negative = text.startswith("-")
        body = text.lstrip("+-")
        try:
            seconds = float(body)
        except ValueError:
            parts = _DURATION_PART.findall(body)
            if not parts or "".join(n + u for n, u in parts) != body:
                raise ValueError(
                    f"invalid duration {value!r}: use seconds or a form like '30s', '5m', '1h'"
                ) from None
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
        if negative:
            seconds = -seconds
    if math.isnan(seconds):
        raise ValueError("a duration cannot be NaN")
    if seconds < 0 or seconds >= FOREVER_AFTER:
        return None
    return seconds


def parse_seconds(value: str | float | int) -> float:
    """A duration that must end: like ``parse_duration``, but forever is an error."""
    seconds = parse_duration(value)
    if seconds is None:
        raise ValueError(f"must be zero or more seconds, not forever (got {value!r})")
    return seconds


def parse_size(value: str | int, total: int | None = None) -> int:
    """Bytes from ``8GiB``, ``512MB``, ``1073741824`` or ``"75%"`` (a share of ``total``)."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string like '8GiB' or '75%'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    text = value.strip()
    if text.endswith("%"):
        if total is None:
            raise ValueError(f"a percentage ({value!r}) is not allowed here")
        share = float(text[:-1])
        if not 0 < share <= 100:
            raise ValueError(f"a percentage must be in (0, 100], got {value!r}")
        return int(total * share / 100)
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"invalid size {value!r}: use bytes or a form like '512MiB', '8GB', '75%'")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNIT[(unit or "").lower()])


def format_size(n: int | float) -> str:
    """``1536 MiB`` style, for messages and tables."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
