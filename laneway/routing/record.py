"""What one request did, as the access log, the RED metrics and (later) the request explorer see it.

The API creates a ``RequestRecord`` when a request arrives (``api.access``); the route handler
fills in who asked for what, the router which lane served it, after how many attempts and how
long it queued, and the tokens the upstream reported; the API the status, the time to first byte
and the duration when the response ends. Plain field writes on the request path; whatever reads
the record does so once, after the response ended.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    method: str
    path: str
    started: float  # monotonic, when the request arrived
    at: float  # wall clock, when the request arrived
    dialect: str = "openai"  # the caller's API shape (openai; later anthropic, responses, ollama)
    caller: str | None = None
    operation: str | None = None  # chat | completion | embedding
    requested: str | None = None  # the model name (or route, or lane id) asked for
    streamed: bool = False
    lane: str | None = None  # the lane that served it (or the last one tried)
    backend: str | None = None
    attempts: int = 0
    queue_wait: float = 0.0  # seconds spent waiting for pool slots, over all attempts
    status: int | None = None
    error: str | None = None  # laneway's error code when it failed (e.g. upstream_timeout)
    ttft: float | None = None  # seconds to the first body byte sent (streams: the first token)
    duration: float | None = None  # seconds to the end of the response
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
