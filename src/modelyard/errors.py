"""Errors that reach a client, each with its HTTP status and OpenAI ``type``/``code``.

The tree::

    ModelyardError                      500 server_error
    ├── ConfigError                     (never reaches a client: the server does not start)
    ├── InvalidRequestError             400 invalid_request_error
    │   ├── WrongModelKindError         400 invalid_request_error / model_kind_mismatch
    │   └── ContextLengthError          400 invalid_request_error / context_length_exceeded
    ├── ModelNotFoundError              404 invalid_request_error / model_not_found
    ├── ConflictError                   409 invalid_request_error / conflict
    ├── HubError                        502 server_error / hub_error (pulling from the hub)
    │   ├── HubNotFoundError            404 invalid_request_error / not_found_on_hub
    │   ├── VerificationError           502 server_error / verification_failed
    │   └── DiskFullError               507 server_error / insufficient_storage
    ├── QueueFullError                  429 rate_limit_error / queue_full (Retry-After)
    ├── RunnerError                     502 server_error / runner_failed
    ├── LoadFailedError                 503 server_error / model_load_failed
    ├── QueueTimeoutError               503 server_error / queue_timeout (Retry-After)
    ├── ModelUnloadedError              503 server_error / model_unloaded
    ├── DoesNotFitError                 507 server_error / insufficient_memory
    └── UpstreamError                   the runner's own status and message

Code raises these; ``modelyard.api.errors`` is the one place that turns them into responses.
"""

from __future__ import annotations


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
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after


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


class ModelNotFoundError(ModelyardError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class ConflictError(ModelyardError):
    """The request clashes with what is going on: a pull already running, a model in use."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


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


class RunnerError(ModelyardError):
    status = 502
    code = "runner_failed"


class LoadFailedError(ModelyardError):
    status = 503
    code = "model_load_failed"


class QueueTimeoutError(ModelyardError):
    status = 503
    code = "queue_timeout"


class ModelUnloadedError(ModelyardError):
    status = 503
    code = "model_unloaded"


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
