"""What every request must pass before a route sees it: size limits, and for the admin
routes proof that no other web site sent it.

- Headers larger than ``MAX_HEADERS`` in all are refused with 431.
- A body larger than ``max_body`` is refused with 413: at once when ``Content-Length`` says
  so, else as soon as the bytes read pass the limit (so 50 MB never sit in memory).
- Requests that change state under ``/api/`` (load, unload, pull, delete, reload…) and
  ``/upstream/`` (an engine's own API, e.g. llama.cpp's slot actions) must
  come from a program or from a page of this server itself. A web page elsewhere can make
  the browser send a "simple" cross-site POST (a form's ``text/plain`` or
  ``application/x-www-form-urlencoded``, no preflight) that the server would act on; every
  browser that can send one marks it with ``Origin`` (and ``Sec-Fetch-Site``). So such
  requests are refused with 403 when the browser says they are cross-site
  (``Sec-Fetch-Site``) or their ``Origin`` is not this server (nor a page the operator named
  in ``cors_origins``), and a request with an ``Origin`` and a body must send it as
  ``application/json`` (415; no page can send that cross-site without a preflight, which
  this server never answers). A request no browser made (no ``Origin``, no ``Sec-Fetch-*``:
  curl, the SDKs) is judged by its credentials alone: ``curl -d`` works as Ollama's
  documentation shows it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.api.errors import error_response
from modelyard.api.routes import MODEL_ROUTES
from modelyard.errors import (
    HeadersTooLargeError,
    ModelyardError,
    PayloadTooLargeError,
    PermissionDeniedError,
    UnsupportedMediaTypeError,
)
from modelyard.quantity import format_size

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_GUARDED = ("/api/", "/upstream/")
"""Admin routes, and engines' own APIs reached through the gateway."""
_TRUSTED_FETCH_SITES = frozenset({b"same-origin", b"none"})
MAX_HEADERS = 32 * 1024
"""Bytes of request headers in all (a browser's many cookies stay well under it)."""


class Guard:
    """ASGI middleware: the size limit for every request, the cross-site and JSON checks for
    the admin routes (see the module)."""

    def __init__(
        self, app: ASGIApp, max_body: int, trusted_origins: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.trusted = frozenset(o.encode("latin-1") for o in trusted_origins)
        """Origins besides this server's own that may send admin requests (``cors_origins``
        named explicitly; ``*`` opens the API to every page, never the admin routes)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = scope["headers"]
        headers = dict(raw)
        try:
            if sum(len(k) + len(v) for k, v in raw) > MAX_HEADERS:
                raise HeadersTooLargeError(
                    f"The request headers are larger than {format_size(MAX_HEADERS)}"
                )
            length = _content_length(headers)
            if length is not None and length > self.max_body:
                raise self._too_large()
            path = scope["path"]
            if (
                scope["method"] not in _SAFE_METHODS
                and path.startswith(_GUARDED)
                and path not in MODEL_ROUTES  # Ollama's inference: open to web pages like /v1/
            ):
                _check_admin(headers, length, self.trusted)
        except ModelyardError as exc:
            response = error_response(exc, path=scope["path"])
            if isinstance(exc, PayloadTooLargeError):
                response.headers["Connection"] = "close"  # the rest of the body stays unread
            await response(scope, receive, send)
            return
        if length is not None:
            await self.app(scope, receive, send)  # the server reads no more than it says
            return
        await self.app(scope, self._counting(receive), send)

    def _too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"The request body is larger than {format_size(self.max_body)}: send less "
            "(or raise max_request_size in the [server] table)"
        )

    def _counting(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise self._too_large()
            return message

        return counted


def _content_length(headers: dict[bytes, bytes]) -> int | None:
    value = headers.get(b"content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _check_admin(
    headers: dict[bytes, bytes], length: int | None, trusted: frozenset[bytes]
) -> None:
    site = headers.get(b"sec-fetch-site")
    origin = headers.get(b"origin")
    named = origin is not None and origin in trusted  # a page named in cors_origins
    if not named and (
        (site is not None and site not in _TRUSTED_FETCH_SITES)
        or (origin is not None and not _same_origin(origin, headers.get(b"host", b"")))
    ):
        raise PermissionDeniedError(
            "Admin requests are not accepted from other web sites (Origin "
            f"{(origin or b'-').decode('latin-1')!r}, Sec-Fetch-Site "
            f"{(site or b'-').decode('latin-1')!r})"
        )
    if origin is None and site is None:
        return  # no browser sent it
    has_body = (length or 0) > 0 or b"transfer-encoding" in headers
    media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    if has_body and media != b"application/json":
        raise UnsupportedMediaTypeError(
            "Admin requests must send their body as JSON (Content-Type: application/json); "
            f"got {media.decode('latin-1') or 'no Content-Type'!r}"
        )


def _same_origin(origin: bytes, host: bytes) -> bool:
    parts = urlsplit(origin.decode("latin-1"))
    return (
        parts.scheme in ("http", "https") and parts.netloc.lower() == host.decode("latin-1").lower()
    )
