"""The one redaction step: what an upstream says is cleaned of secrets before laneway keeps it.

Upstreams quote what they were sent ("Incorrect API key provided: sk-…"), and their error text is
what operators need to see (logs, ``/admin/failovers``, ``laneway backends``). Every piece of
upstream text that laneway stores in an error passes through ``redact`` first, at the place it is
read (``laneway.errors.UpstreamError`` does it on construction): the backend's own credentials
are removed wherever they appear, and so is anything shaped like a key or a bearer token. Clients
never get upstream text at all, redacted or not, except an upstream's explanation of what was
wrong with the client's own request (``UpstreamStatusError.client_message``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "[redacted]"

# Shapes of credentials, most specific first. Each matches the secret itself (group "s") and
# keeps what introduces it, so "Authorization: Bearer sk-…" reads "Authorization: Bearer [redacted]".
_SHAPES = re.compile(
    "|".join(
        (
            r"(?i:bearer|basic|token)\s+(?P<s1>[A-Za-z0-9._~+/=-]{8,})",  # an Authorization value
            r"(?P<s2>\bsk-[A-Za-z0-9_-]{8,})",  # OpenAI / Anthropic (sk-ant-…) / OpenRouter keys
            r"(?P<s3>\b(?:AIza|ya29\.)[A-Za-z0-9_-]{16,})",  # Google API keys, OAuth access tokens
            r"(?P<s4>\b(?:AKIA|ASIA)[A-Z0-9]{16})",  # AWS access key ids
            r"(?P<s5>\b(?:gh[pousr]|github_pat|glpat|xox[abpr]|hf)_[A-Za-z0-9_-]{12,})",  # forges, chat
            r"(?P<s6>\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*)",  # a JWT
            # key=…, "api_key": "…", x-api-key: … (a query string, JSON or a header echoed back)
            r"\b(?i:api[_-]?key|x-api-key|x-goog-api-key|access[_-]?token|secret|password|key)"
            r"""["']?\s*[:=]\s*["']?(?P<s7>[A-Za-z0-9._~+/=-]{8,})""",
            r"(?P<s8>\b[A-Fa-f0-9]{40,}\b)",  # long hex: a token or a hash of one
        )
    )
)
_GROUPS = tuple(f"s{i}" for i in range(1, 9))


def _mask(match: re.Match[str]) -> str:
    for name in _GROUPS:
        start = match.start(name)
        if start != -1:
            whole = match.group(0)
            offset = start - match.start()
            return whole[:offset] + MASK + whole[offset + len(match.group(name)) :]
    return MASK


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without ``secrets`` (a backend's own credentials; empty or short ones are
    ignored: masking every "a" would destroy the text and protect nothing) and without anything
    shaped like a credential."""
    for secret in secrets:
        if secret and len(secret) >= 6 and secret in text:
            text = text.replace(secret, MASK)
    return _SHAPES.sub(_mask, text)
