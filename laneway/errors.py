"""laneway's one error tree.

    LanewayError
     ├── ConfigError                 a config file or value is wrong (names the key, the file, the line)
     ├── ClientError                 the request is at fault; never retried on another lane
     │    ├── InvalidRequest         400
     │    ├── AuthenticationFailed   401
     │    ├── PermissionDenied       403
     │    ├── ModelNotFound          404
     │    ├── PayloadTooLarge        413
     │    ├── ClientGone             499  (the client left mid-upload: nobody to answer)
     │    └── UnsupportedParameter   422  (valid OpenAI, but the chosen family cannot honour it)
     ├── NoLaneAvailable             503  (lanes exist but none could be tried)
     │    └── Draining               503  this replica is shutting down
     ├── QueueFull                   429  a pool's queue already holds queue_size waiters (Retry-After)
     ├── QueueTimeout                503  waited queue_timeout for a pool slot (Retry-After)
     ├── QuotaExhausted              429  every lane that could serve it is out of quota (Retry-After)
     └── UpstreamError               something between us and a backend went wrong
          ├── TransportError         no usable HTTP answer: connect refused, reset, timed out
          │    ├── UpstreamConnectError
          │    ├── UpstreamTimeout   504
          │    └── StreamBroken      the connection dropped in the middle of a body
          ├── UpstreamStatusError    the backend answered with an error status
          └── UpstreamProtocolError  the backend answered with something we cannot read (502)

Foreign exceptions (aiohttp, asyncio timeouts, JSON decode errors) are translated into this tree
at the provider boundary (``laneway.providers.http``) and never travel further.

Two texts per error. ``message`` is for operators (logs, admin views, failover records): it may
name backends and quote what an upstream said, always through ``laneway.redact`` (an
``UpstreamError`` redacts on construction, so no error ever holds a raw credential).
``client_message`` is what a client is told: laneway's own words, never upstream text (but an
upstream's explanation of what was wrong with the client's own request), never a backend's name.

What a failure means is decided in exactly one place, ``classify``: its ``Verdict`` says whether
another lane may be tried, whether it counts against the lane's breaker and the backend's signal,
whether the credential's cooldown starts, whether the lane is stale, and whether (and for how
long) the upstream asked to be left alone. The router, the signals, the refresher and the
breakers read the verdict; none decides for itself. The pool errors are not ``UpstreamError``s on
purpose: a busy pool says nothing about a backend's health, so they never count against its
breaker, and the router simply tries the next lane.

Every error that leaves the router carries its ``Attribution`` (who the request was for, which
lane and attempt), a field of ``LanewayError`` the router fills in.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from laneway.redact import redact
from laneway.retry_after import retry_at


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who a failed request was for and where it failed: the client sees it in the error body
    (the lane only where the operator allows it), the log in a structured event. ``prompt`` is
    there only when the operator enabled ``routing.record_prompts``."""

    caller: str
    request_id: str
    run_id: str | None
    lane: str | None
    attempt: int
    prompt: Any = None

    def as_dict(self) -> dict[str, Any]:
        shown = asdict(self)
        if self.prompt is None:
            del shown["prompt"]
        return shown


class LanewayError(Exception):
    """Base class of every error laneway raises on purpose."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        # Stamped by the router on every error that leaves it (None: it never went through one).
        self.attribution: Attribution | None = None

    @property
    def client_message(self) -> str:
        """What a client is told (``message`` unless the error holds what a client may not see)."""
        return self.message

    @property
    def error_code(self) -> str:
        """The machine-readable kind of this error, in the body, the logs and the records."""
        return self.code or self.error_type

    def to_openai(self, message: str | None = None) -> dict[str, Any]:
        """The OpenAI error shape: ``{"error": {"message", "type", "param", "code"}}``, with
        ``message`` (default: ``client_message``)."""
        return {
            "error": {
                "message": self.client_message if message is None else message,
                "type": self.error_type,
                "param": self.param,
                "code": self.error_code,
            }
        }

    def headers(self) -> dict[str, str]:
        return {}


class ConfigError(LanewayError):
    def __init__(
        self, message: str, *, key: str | None = None, file: str | None = None, line: int | None = None
    ):
        where = []
        if file:
            where.append(file + (f":{line}" if line else ""))
        if key:
            where.append(f"key '{key}'")
        prefix = f"config error in {', '.join(where)}: " if where else "config error: "
        super().__init__(prefix + message)
        self.key = key
        self.file = file
        self.line = line


# --- the client's fault -------------------------------------------------------------------------


class ClientError(LanewayError):
    status = 400
    error_type = "invalid_request_error"


class InvalidRequest(ClientError):
    status = 400
    code = "invalid_request"


class AuthenticationFailed(ClientError):
    status = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(ClientError):
    status = 403
    error_type = "permission_error"
    code = "permission_denied"


class ModelNotFound(ClientError):
    status = 404
    code = "model_not_found"


class PayloadTooLarge(ClientError):
    status = 413
    code = "payload_too_large"


class ClientGone(ClientError):
    """The client closed the connection before its request had arrived: nobody to answer (the
    499 only shows in the access log)."""

    status = 499
    code = "client_closed_request"


class UnsupportedParameter(ClientError):
    status = 422
    code = "unsupported_parameter"


def _retry_after(seconds: float) -> dict[str, str]:
    """Retry-After as a whole number of seconds, at least 1 (0 would invite an instant retry)."""
    whole = math.ceil(seconds) if math.isfinite(seconds) else 1
    return {"retry-after": str(max(1, whole))}


class NoLaneAvailable(LanewayError):
    """Lanes that could serve the request exist (or did), but none can take it now: breakers
    open, credentials in cooldown, backends unreachable. ``retry_after`` (seconds) is when one
    is expected back, when that is known."""

    status = 503
    error_type = "service_unavailable"
    code = "no_lane_available"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return _retry_after(self.retry_after) if self.retry_after is not None else {}


class Draining(NoLaneAvailable):
    """This replica is shutting down: it takes no new requests (another one answers)."""

    code = "draining"

    def __init__(self) -> None:
        super().__init__(
            "laneway is shutting down and takes no new requests; retry (another replica answers)",
            retry_after=1,
        )


# --- pools (laneway.pools) ----------------------------------------------------------------------


class QueueFull(LanewayError):
    """``queue_size`` callers already wait for the pool: refused at once, without queueing.
    ``retry_after`` (seconds) is the pool's estimate of when asking again is worth it."""

    status = 429
    error_type = "rate_limit_error"
    code = "queue_full"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return _retry_after(self.retry_after)


class QuotaExhausted(LanewayError):
    """Every candidate lane's backend said its quota is used up (rate-limit headers or a 429);
    ``retry_after`` is the time to the earliest reset."""

    status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return _retry_after(self.retry_after)


class QueueTimeout(LanewayError):
    """Waited ``queue_timeout`` seconds for a pool slot without getting one."""

    status = 503
    error_type = "service_unavailable"
    code = "queue_timeout"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return _retry_after(self.retry_after)


# --- upstream -----------------------------------------------------------------------------------


class UpstreamError(LanewayError):
    """A backend could not serve the call. ``backend`` names it; what the failure means for the
    request, the lane and the backend is ``classify``'s to say."""

    status = 502
    error_type = "upstream_error"
    code = "bad_gateway"
    # What a client is told, in laneway's words (see the module docstring).
    public: ClassVar[str] = "The model's backend failed"

    def __init__(self, message: str, *, backend: str = "", secrets: Iterable[str] = ()) -> None:
        # The one redaction step (laneway.redact): ``secrets`` are the backend's own credentials.
        super().__init__(redact(message, secrets))
        self.backend = backend

    @property
    def client_message(self) -> str:
        return self.public


class TransportError(UpstreamError):
    pass


class UpstreamConnectError(TransportError):
    code = "upstream_unreachable"
    public = "laneway could not reach the model's backend"


class UpstreamTimeout(TransportError):
    status = 504
    code = "upstream_timeout"
    public = "The model's backend did not answer in time"


class StreamBroken(TransportError):
    code = "upstream_stream_broken"
    public = "The model's backend broke off its answer"


class UpstreamProtocolError(UpstreamError):
    """The backend answered, but not in its family's wire format (garbage, truncated JSON...)."""

    code = "upstream_bad_response"
    public = "The model's backend answered with something laneway cannot read"


class UpstreamStatusError(UpstreamError):
    """The backend answered with an HTTP error status."""

    def __init__(
        self,
        message: str,
        *,
        backend: str = "",
        upstream_status: int,
        upstream_headers: Mapping[str, str] | None = None,
        upstream_message: str | None = None,
        secrets: Iterable[str] = (),
    ) -> None:
        super().__init__(message, backend=backend, secrets=secrets)
        self.upstream_status = upstream_status
        self.upstream_headers = dict(upstream_headers or {})
        # What the upstream said, redacted: a client sees it only when it is about its request.
        self.upstream_message = redact(upstream_message, secrets) if upstream_message else None

    @property
    def client_message(self) -> str:
        s = self.upstream_status
        if s in (401, 403):
            return "The model's backend refused laneway's credentials for it (an operator must fix them)"
        if s == 429:
            return "The model's backend is rate-limiting requests; retry later"
        if 400 <= s < 500:
            said = f": {self.upstream_message}" if self.upstream_message else ""
            return f"The model's backend refused the request (HTTP {s}){said}"
        return f"The model's backend failed (HTTP {s})"

    def client_status(self) -> int:
        """What the client sees. A backend's 429 stays 429 (with its Retry-After); a backend's
        credentials being refused is our fault, not the client's (502); other 4xx are about the
        request itself and keep their status; 5xx become 502."""
        s = self.upstream_status
        if s == 429:
            return 429
        if s in (401, 403) or s >= 500:
            return 502
        if 400 <= s < 500:
            return s
        return 502

    def headers(self) -> dict[str, str]:
        ra = self.upstream_headers.get("retry-after")
        return {"retry-after": ra} if ra and self.upstream_status == 429 else {}

    @property
    def error_code(self) -> str:
        s = self.upstream_status
        if s == 429:
            return "rate_limit_exceeded"
        if s in (401, 403):
            return "upstream_auth_failed"
        if 400 <= s < 500:
            return f"upstream_{s}"
        return "bad_gateway"

    def to_openai(self, message: str | None = None) -> dict[str, Any]:
        body = super().to_openai(message)
        s = self.upstream_status
        if s == 429:
            body["error"]["type"] = "rate_limit_error"
        elif 400 <= s < 500 and s not in (401, 403):
            body["error"]["type"] = "invalid_request_error"
        return body


def http_status(err: LanewayError) -> int:
    """The HTTP status a client receives for ``err``."""
    if isinstance(err, UpstreamStatusError):
        return err.client_status()
    return err.status


# --- what a failure means -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one failure means (``classify``). Every field defaults to "no".

    - ``retryable``: another lane may be tried for this request.
    - ``unhealthy``: the lane (and its backend) failed: it counts against the lane's breaker and
      makes the backend's signal degraded.
    - ``auth_failure``: the backend refused laneway's credential: its cooldown starts (the lanes
      leave rotation by that, not by the breaker), and the request goes on to another lane.
    - ``stale_lane``: a 404 for the lane's model: the inventory is stale, the lane is marked so.
    - ``rate_limited``: a 429: the backend's quota is used up (until ``retry_after``, or its
      rate-limit headers' reset).
    - ``unavailable``: a 503 or 529 that said when to come back: the backend is unavailable until
      then (``retry_after``), which is neither used-up quota nor ill health.
    - ``retry_after``: seconds the upstream asked to wait (``Retry-After``), when it said.
    """

    retryable: bool = False
    unhealthy: bool = False
    auth_failure: bool = False
    stale_lane: bool = False
    rate_limited: bool = False
    unavailable: bool = False
    retry_after: float | None = None


# 401/403, or an answer whose message means bad credentials (some upstreams, and proxies in front of
# them, refuse a key with a 400 or a 500 that says so).
_AUTH_STATUSES = frozenset({401, 403})
_BAD_CREDENTIALS = re.compile(
    r"unauthori[sz]ed|invalid[ _-]?(x-)?api[ _-]?key|incorrect api key|invalid[ _-]credentials"
    r"|invalid[ _-]token|authentication[ _-](failed|error)|forbidden|permission[ _-]denied",
    re.IGNORECASE,
)
# 408 and 409 are the backend's trouble (it timed out, or lost a race), not the request's.
_UNHEALTHY_4XX = frozenset({408, 409})
# Statuses whose Retry-After says when the backend is available again.
_UNAVAILABLE = frozenset({503, 529})

_FINAL = Verdict()  # the client's fault, or laneway's own: nothing to learn, nothing to retry
_BUSY = Verdict(retryable=True)  # a full pool, or a queue wait that ran out: try the next lane
_BROKEN = Verdict(retryable=True, unhealthy=True)
_REFUSED = Verdict(retryable=True, auth_failure=True)
_STALE = Verdict(retryable=True, stale_lane=True)
# A lane's family cannot honour a parameter (its adapter refused before calling): another lane
# of another family may. Nothing is wrong with the lane, so no breaker and no signal.
_CANNOT = Verdict(retryable=True)


def classify(exc: LanewayError, *, now: float) -> Verdict:
    """What ``exc``, raised by one attempt, means (``now``: the wall clock, for a Retry-After
    given as an HTTP date).

    Retryable (DESIGN.md): connect errors, timeouts, broken streams, answers laneway cannot read,
    408, 409, 429, 5xx, 529; a 404 (laneway chose the lane because its inventory said the backend
    serves the model: a 404 means the inventory is stale, not that the client asked for something
    wrong); a refused credential (it is laneway's, not the client's: another backend's may serve);
    a busy pool; a parameter the lane's family cannot honour (``UnsupportedParameter``, raised by
    its adapter before any call: a lane of another family may serve it, and if none can, the last
    refusal is what the client gets). Not retryable: the client's fault (other 4xx), and
    laneway's own errors. A transport failure is never an auth failure, whatever its message says.
    """
    if isinstance(exc, UpstreamStatusError):
        return _status_verdict(exc, now)
    if isinstance(exc, TransportError):
        return _BROKEN
    if isinstance(exc, UpstreamError):  # unreadable answers, a publisher gone: the backend failed
        return _REFUSED if _BAD_CREDENTIALS.search(exc.message) else _BROKEN
    if isinstance(exc, QueueFull | QueueTimeout):
        return _BUSY
    if isinstance(exc, UnsupportedParameter):
        return _CANNOT
    return _FINAL


def _status_verdict(exc: UpstreamStatusError, now: float) -> Verdict:
    s = exc.upstream_status
    if s in _AUTH_STATUSES or _BAD_CREDENTIALS.search(exc.message):
        return _REFUSED
    if s == 404:
        return _STALE
    if s == 429:
        return Verdict(retryable=True, rate_limited=True, retry_after=_asked(exc, now))
    if s >= 500:
        wait = _asked(exc, now) if s in _UNAVAILABLE else None
        if wait is not None:
            return Verdict(retryable=True, unavailable=True, retry_after=wait)
        return _BROKEN
    if s in _UNHEALTHY_4XX:
        return _BROKEN
    return _FINAL


def _asked(exc: UpstreamStatusError, now: float) -> float | None:
    """Seconds the answer's Retry-After asked for (a date in the past: 0), or None."""
    at = retry_at(exc.upstream_headers, now)
    return None if at is None else max(0.0, at - now)
