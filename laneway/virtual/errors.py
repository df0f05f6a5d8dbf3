"""The errors of the publisher endpoints and of relayed calls."""

from __future__ import annotations

from laneway.errors import ClientError, InvalidRequest, LanewayError, UpstreamError


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


class RelayUnavailable(LanewayError):
    """The cluster could not do what a publisher asked in time: a change of its session met
    other replicas' changes too often (nothing was done: it may try again), or the replica whose
    request waits for a task did not answer a post of it (the task is given back there)."""

    status = 503
    error_type = "server_error"
    code = "relay_unavailable"


_RELAYED: dict[str, type[LanewayError]] = {
    cls.code: cls
    for cls in (UnknownTask, Conflict, InvalidRequest, UnknownSession, RelayUnavailable)
    if cls.code
}


def error_record(exc: LanewayError) -> dict[str, object]:
    """An error, as one replica tells another what a publisher is to be answered."""
    return {"code": exc.error_code, "message": exc.message, "param": exc.param}


def from_error_record(record: dict[str, object]) -> LanewayError:
    """``error_record``'s inverse: the same class (an unknown one: an invalid request)."""
    cls = _RELAYED.get(str(record.get("code")), InvalidRequest)
    param = record.get("param")
    return cls(str(record.get("message")), param=param if isinstance(param, str) else None)
