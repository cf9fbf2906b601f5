"""Errors that reach a client, each with its HTTP status and OpenAI ``type``/``code``.

The tree::

    ModelyardError                      500 server_error
    ├── ConfigError                     (never reaches a client: the server does not start)
    ├── InvalidRequestError             400 invalid_request_error
    │   ├── WrongModelKindError         400 invalid_request_error / model_kind_mismatch
    │   ├── ContextLengthError          400 invalid_request_error / context_length_exceeded
    │   └── UnsupportedFeatureError     400 invalid_request_error / unsupported_feature
    ├── NotFoundError                   404 invalid_request_error / not_found
    │   └── ModelNotFoundError          404 invalid_request_error / model_not_found
    ├── AuthenticationError             401 authentication_error / invalid_api_key
    ├── PermissionDeniedError           403 invalid_request_error / cross_site_request
    │   ├── ForbiddenError              403 permission_error / permission_denied
    │   ├── RoleError                   403 permission_error / insufficient_role
    │   └── ModelNotAllowedError        403 permission_error / model_not_allowed
    ├── ConflictError                   409 invalid_request_error / conflict
    ├── NotSupportedError               501 invalid_request_error / not_supported
    ├── PayloadTooLargeError            413 invalid_request_error / request_too_large
    ├── HeadersTooLargeError            431 invalid_request_error / headers_too_large
    ├── UnsupportedMediaTypeError       415 invalid_request_error / unsupported_media_type
    ├── HubError                        502 server_error / hub_error (pulling from the hub)
    │   ├── HubNotFoundError            404 invalid_request_error / not_found_on_hub
    │   ├── VerificationError           502 server_error / verification_failed
    │   └── DiskFullError               507 server_error / insufficient_storage
    ├── QueueFullError                  429 rate_limit_error / queue_full (Retry-After)
    ├── RateLimitError                  429 rate_limit_error / rate_limit_exceeded (Retry-After)
    ├── InsufficientQuotaError          429 insufficient_quota / insufficient_quota
    ├── RunnerError                     502 server_error / runner_failed
    │   └── RunnerUnreachableError      502 server_error / runner_unreachable (never took it)
    ├── LoadFailedError                 503 server_error / model_load_failed
    ├── QueueTimeoutError               503 server_error / queue_timeout (Retry-After)
    ├── ModelUnloadedError              503 server_error / model_unloaded
    ├── ShuttingDownError               503 server_error / shutting_down
    ├── DoesNotFitError                 507 server_error / insufficient_memory
    └── UpstreamError                   the runner's own status and message

Code raises these; ``modelyard.api.errors`` is the one place that turns them into the
gateway's responses. ``envelope`` and ``invalid_request`` are here, free of any web framework,
so that the workers (standalone programs) answer in the same shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class ModelyardError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.headers: Mapping[str, str] = headers or {}
        """Sent with the error response (the rate limits' ``x-ratelimit-*``)."""
        self.event: int | None = None

    def add_event(self, event: int) -> None:
        """Names the event-log entry of the decision behind this error."""
        self.event = event
        self.message = f"{self.message} (event {event})"

    def envelope(self) -> dict[str, Any]:
        """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class ConfigError(ModelyardError):
    """An invalid ``modelyard.toml`` or environment setting; names the file, table and key."""

    code = "invalid_config"


class InvalidRequestError(ModelyardError):
    status = 400
    type = "invalid_request_error"


class WrongModelKindError(InvalidRequestError):
    code = "model_kind_mismatch"


class ContextLengthError(InvalidRequestError):
    code = "context_length_exceeded"


class UnsupportedFeatureError(InvalidRequestError):
    """The request asks for something this model cannot do (images without a projector)."""

    code = "unsupported_feature"


class AuthenticationError(ModelyardError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(ModelyardError):
    status = 403
    type = "invalid_request_error"
    code = "cross_site_request"


class ForbiddenError(PermissionDeniedError):
    """Not for this caller (someone else's key, sign-up turned off…)."""

    type = "permission_error"
    code = "permission_denied"


class RoleError(PermissionDeniedError):
    """The key's or user's role may not use this route."""

    type = "permission_error"
    code = "insufficient_role"


class ModelNotAllowedError(PermissionDeniedError):
    type = "permission_error"
    code = "model_not_allowed"


class PayloadTooLargeError(ModelyardError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class HeadersTooLargeError(ModelyardError):
    status = 431
    type = "invalid_request_error"
    code = "headers_too_large"


class UnsupportedMediaTypeError(ModelyardError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class NotFoundError(ModelyardError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class ConflictError(ModelyardError):
    """The request clashes with what is going on: a pull already running, a model in use."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class NotSupportedError(ModelyardError):
    """An operation of another API that modelyard does not offer (Ollama's ``create``)."""

    status = 501
    type = "invalid_request_error"
    code = "not_supported"


class HubError(ModelyardError):
    """The hub could not be reached or gave an answer we cannot use."""

    status = 502
    code = "hub_error"


class HubNotFoundError(HubError):
    """No such repository, revision, file or quantisation on the hub."""

    status = 404
    type = "invalid_request_error"
    code = "not_found_on_hub"


class VerificationError(HubError):
    """A downloaded file does not match the size or checksum the hub published."""

    code = "verification_failed"


class DiskFullError(HubError):
    status = 507
    code = "insufficient_storage"


class QueueFullError(ModelyardError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"


class RateLimitError(ModelyardError):
    """A key or user sent more requests or tokens per minute, or more at once, than allowed."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class InsufficientQuotaError(ModelyardError):
    """The token balance cannot cover the request's worst case."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class RunnerError(ModelyardError):
    status = 502
    code = "runner_failed"


class RunnerUnreachableError(RunnerError):
    """The runner refused the connection or dropped it before taking the request: it is
    gone (or going), and the request can wait for its restart."""

    code = "runner_unreachable"


class LoadFailedError(ModelyardError):
    status = 503
    code = "model_load_failed"


class QueueTimeoutError(ModelyardError):
    status = 503
    code = "queue_timeout"


class ModelUnloadedError(ModelyardError):
    status = 503
    code = "model_unloaded"


class ShuttingDownError(ModelyardError):
    status = 503
    code = "shutting_down"


class DoesNotFitError(ModelyardError):
    status = 507
    code = "insufficient_memory"


class UpstreamError(ModelyardError):
    """An error answer from a runner, passed on with the runner's own status and message."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, param=param)
        self.status = status
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.code = code


def invalid_request(errors: Sequence[Mapping[str, Any]]) -> InvalidRequestError:
    """A validation failure (pydantic's ``errors()``) as a 400: the first problem, with its
    dotted field path in ``param``."""
    first: Mapping[str, Any] = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first["loc"] if p != "body"]
    param = ".".join(loc) or None
    message = str(first["msg"]).removeprefix("Value error, ")
    if param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return InvalidRequestError(message, param=param)
