"""What a command engine's entry may say: its placeholders and stop signal
(``modelyard.engines.command.runner`` runs it)."""

from __future__ import annotations

import signal
import string
from collections.abc import Sequence

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
