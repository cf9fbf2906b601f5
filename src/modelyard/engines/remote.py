"""A server already running at a URL: no process of ours."""

from __future__ import annotations

from modelyard.engines.base import Engine


class Remote(Engine):
    relays = True
