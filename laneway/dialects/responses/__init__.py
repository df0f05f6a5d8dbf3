"""The OpenAI Responses API (``POST /v1/responses``), served on every lane by translation to and
from the OpenAI chat format: ``request`` (a request → a chat body), ``response`` (a chat
completion → a response object), ``stream`` (a chat stream → the Responses events), with the
tools (``tools``) and input items (``items``) the two formats name differently."""

from laneway.errors import ClientError


class PreviousResponseNotFound(ClientError):
    """``previous_response_id`` names no response this caller may continue (OpenAI's words)."""

    status = 404
    code = "previous_response_not_found"


class ResponseNotFound(ClientError):
    """``GET``/``DELETE /v1/responses/{id}`` of an id this caller has no response by."""

    status = 404
    code = "response_not_found"
