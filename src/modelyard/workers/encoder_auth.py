"""The encoder worker answers only the gateway: every request but ``/health`` must carry the
key the gateway started it with (``Authorization: Bearer <key>``), as llama.cpp's
``--api-key`` does for its runners.

Kept apart from the worker itself so that the gateway reads the variable's name without
importing torch.
"""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

from modelyard.errors import AuthenticationError

KEY_ENV = "MODELYARD_RUNNER_KEY"
_PUBLIC = frozenset({"/health"})
_DENIED = AuthenticationError("This runner answers only the modelyard gateway that started it")


class RequireKey:
    """ASGI middleware: 401 for any request without the key (a ``None`` key checks nothing)."""

    def __init__(self, app: ASGIApp, key: str | None) -> None:
        self.app = app
        self._expected = f"Bearer {key}".encode() if key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._expected is None or scope["type"] != "http" or scope["path"] in _PUBLIC:
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if hmac.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": _DENIED.status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(_DENIED.envelope()).encode()})
