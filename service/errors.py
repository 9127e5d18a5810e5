"""The service's errors. Each maps to one HTTP status and one `error_type`; `app.py` renders them all as
`{"error": "<message>", "error_type": "<kind>"}`."""

from collections.abc import Mapping


class ServiceError(Exception):
    """An error a client sees: `status`, a machine-readable `error_type` and a clear message."""

    status: int = 500
    error_type: str = "backend"

    def __init__(self, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


class BadInput(ServiceError):
    """The request is well-formed JSON but asks for something invalid (422)."""

    status, error_type = 422, "validation"


class WrongTask(ServiceError):
    """The checkpoint was trained for another task (404: this server has no such endpoint for it); the
    message names the endpoint to use."""

    status, error_type = 404, "unsupported_task"


class Unauthorized(ServiceError):
    """An API key is configured and the request's is missing or wrong (401)."""

    status, error_type = 401, "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, {"WWW-Authenticate": "Bearer"})


class PayloadTooLarge(ServiceError):
    """The body is over the operator's limit (413)."""

    status, error_type = 413, "payload_too_large"


class Overloaded(ServiceError):
    """The queue is full (429); `Retry-After` says when to come back."""

    status, error_type = 429, "overloaded"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, {"Retry-After": str(max(1, retry_after_s))})


class NotReady(ServiceError):
    """The model is not loaded yet, or the server is shutting down (503)."""

    status, error_type = 503, "not_ready"

    def __init__(self, message: str = "the model is not ready; retry shortly") -> None:
        super().__init__(message, {"Retry-After": "1"})


class Loading(NotReady):
    """The server is up and the model still loading (503): a startupProbe waits on this."""

    error_type = "loading"

    def __init__(self) -> None:
        super().__init__("the model is loading; retry shortly")


class StartupFailed(NotReady):
    """The model could not be loaded (503, the reason in the message); the server is stopping."""

    error_type = "startup_failed"


class DeadlineExceeded(ServiceError):
    """The request outlived its deadline; its queued work was dropped (504)."""

    status, error_type = 504, "timeout"


class ClientGone(Exception):
    """The client disconnected while its request waited; nothing is sent back."""
