"""The errors of the publisher endpoints and of relayed calls."""

from __future__ import annotations

from laneway.errors import ClientError, UpstreamError


class Conflict(ClientError):
    """The registration would overwrite what is not the caller's (a declared backend, or the
    lanes of a session that is still alive), or a result arrived for a task that already ended."""

    status = 409
    error_type = "invalid_request_error"
    code = "conflict"


class UnknownSession(ClientError):
    status = 404
    error_type = "invalid_request_error"
    code = "unknown_session"


class UnknownTask(ClientError):
    status = 404
    error_type = "invalid_request_error"
    code = "unknown_task"


class PublisherUnavailable(UpstreamError):
    """The publisher of a virtual lane is gone and did not come back in time: another lane may
    serve the request (retryable), else the client gets 503."""

    status = 503
    code = "publisher_unavailable"
    public = "The publisher serving this model is offline"


class WakeFailed(UpstreamError):
    """A hibernating publisher could not be woken; the lanes stay hibernating."""

    status = 503
    code = "wake_failed"
    public = "The publisher serving this model could not be woken"
