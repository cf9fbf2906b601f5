"""Every route's metadata, declared once: who may call it, whose API it belongs to, and
whether it serves a model. The tables the middlewares and the OpenAPI document use are
derived from it: ``RULES`` (auth), ``MODEL_ROUTES`` (traced and charged by the telemetry,
open to web pages like ``/v1/`` in the guard), ``OLLAMA_PATHS`` and ``face_of`` (the shape
of errors)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from modelyard.accounts.identity import Role

UPSTREAM_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
"""The methods ``/upstream/{model}/{path}`` passes to an engine's own API."""

Face = Literal["openai", "ollama", "anthropic"]
"""Whose API a route belongs to: its errors are in that API's shape (modelyard's own routes
answer in OpenAI's)."""


@dataclass(frozen=True)
class Access:
    name: str
    roles: frozenset[Role]
    """Empty: anyone, no key needed."""

    def allows(self, role: Role) -> bool:
        return role in self.roles


PUBLIC = Access("public", frozenset())
ANY = Access("any role", frozenset(Role))
INFERENCE = Access("inference", frozenset({Role.ADMIN, Role.USER}))
MONITOR = Access("monitoring", frozenset({Role.ADMIN, Role.MONITOR}))
ADMIN = Access("admin", frozenset({Role.ADMIN}))


@dataclass(frozen=True)
class Route:
    access: Access
    face: Face = "openai"
    model: bool = False
    """It serves a model: each request is traced, and charged to its key."""


ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/"): Route(PUBLIC),
    ("GET", "/ui"): Route(PUBLIC),
    ("GET", "/ui/"): Route(PUBLIC),
    ("GET", "/ui/{path:path}"): Route(PUBLIC),
    ("GET", "/health"): Route(PUBLIC),
    ("GET", "/ready"): Route(PUBLIC),
    ("GET", "/docs"): Route(PUBLIC),
    ("GET", "/docs/assets/{path:path}"): Route(PUBLIC),
    ("GET", "/openapi.json"): Route(PUBLIC),
    ("POST", "/api/login"): Route(PUBLIC),
    ("POST", "/api/signup"): Route(PUBLIC),
    ("GET", "/v1/models"): Route(ANY),
    ("GET", "/v1/models/{model:path}"): Route(ANY),
    ("GET", "/api/me"): Route(ANY),
    ("GET", "/api/usage"): Route(ANY),
    ("GET", "/api/keys"): Route(ANY),
    ("POST", "/api/keys"): Route(ANY),
    ("DELETE", "/api/keys/{key}"): Route(ANY),
    ("PATCH", "/api/keys/{key}"): Route(ADMIN),
    ("GET", "/api/version"): Route(PUBLIC, "ollama"),
    ("GET", "/api/tags"): Route(ANY, "ollama"),
    ("POST", "/v1/chat/completions"): Route(INFERENCE, model=True),
    ("POST", "/v1/messages"): Route(INFERENCE, "anthropic", model=True),
    ("POST", "/v1/responses"): Route(INFERENCE, model=True),
    ("POST", "/v1/messages/count_tokens"): Route(INFERENCE, "anthropic"),
    ("POST", "/api/chat"): Route(INFERENCE, "ollama", model=True),
    ("POST", "/api/generate"): Route(INFERENCE, "ollama", model=True),
    ("POST", "/api/embed"): Route(INFERENCE, "ollama", model=True),
    ("POST", "/api/embeddings"): Route(INFERENCE, "ollama", model=True),
    ("POST", "/api/create"): Route(ADMIN, "ollama"),
    ("POST", "/api/copy"): Route(ADMIN, "ollama"),
    ("POST", "/api/push"): Route(ADMIN, "ollama"),
    ("POST", "/v1/completions"): Route(INFERENCE, model=True),
    ("POST", "/v1/embeddings"): Route(INFERENCE, model=True),
    ("POST", "/v1/rerank"): Route(INFERENCE, model=True),
    ("POST", "/v2/rerank"): Route(INFERENCE, model=True),
    ("POST", "/rerank"): Route(INFERENCE, model=True),
    ("GET", "/api/ps"): Route(MONITOR, "ollama"),
    ("GET", "/api/models"): Route(MONITOR),
    ("GET", "/api/nodes"): Route(MONITOR),
    ("POST", "/api/show"): Route(ANY, "ollama"),
    ("GET", "/metrics"): Route(MONITOR),
    ("GET", "/api/events"): Route(MONITOR),
    ("GET", "/api/activity"): Route(MONITOR),
    ("GET", "/api/logs"): Route(MONITOR),
    ("GET", "/api/logs/{model:path}"): Route(MONITOR),
    ("GET", "/api/system"): Route(MONITOR),
    ("POST", "/api/load"): Route(ADMIN),
    ("POST", "/api/unload"): Route(ADMIN),
    ("POST", "/api/pin"): Route(ADMIN),
    ("POST", "/api/reload"): Route(ADMIN),
    ("DELETE", "/api/delete"): Route(ADMIN, "ollama"),
    ("POST", "/api/pull"): Route(ADMIN, "ollama"),
    **{(method, "/upstream/{model}/{path:path}"): Route(ADMIN) for method in UPSTREAM_METHODS},
    ("GET", "/api/users"): Route(ADMIN),
    ("POST", "/api/users"): Route(ADMIN),
    ("PATCH", "/api/users/{name}"): Route(ADMIN),
    ("DELETE", "/api/users/{name}"): Route(ADMIN),
}
"""(method, route path as the router writes it) → its metadata."""

RULES: dict[tuple[str, str], Access] = {key: route.access for key, route in ROUTES.items()}
"""(method, route path) → who may call it."""
MODEL_ROUTES = frozenset(path for (_, path), route in ROUTES.items() if route.model)
"""The routes that serve models (``Route.model``)."""
OLLAMA_PATHS = frozenset(path for (_, path), route in ROUTES.items() if route.face == "ollama")
"""Ollama's routes: errors there are Ollama's ``{"error": "message"}``."""
_FACES = {path: route.face for (_, path), route in ROUTES.items() if "{" not in path}


def face_of(path: str) -> Face:
    """The API a request's concrete ``path`` belongs to (an unknown path under Anthropic's
    ``/v1/messages/`` is Anthropic's)."""
    face = _FACES.get(path)
    if face is not None:
        return face
    return "anthropic" if path.startswith("/v1/messages/") else "openai"
