"""The OpenAI Responses API: ``POST /v1/responses`` (whole or streamed), and ``GET`` and
``DELETE /v1/responses/{id}`` of stored responses.

A request is translated to a chat request (``laneway.dialects.responses``) and served by the
router like one from ``/v1/chat/completions`` (operation ``chat``: the same pools, failover,
usage and attribution), then its answer translated back. Errors are OpenAI's shape already.
``store`` (default true, as OpenAI's) keeps the response and its conversation
(``gateway.responses``), before the answer leaves: a ``previous_response_id`` on any replica
finds it. A stored response is its caller's alone: another caller's id is a 404, as an unknown one.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from laneway.api.inbound import CLIENT_GONE, Admitted, Inbound, served_headers
from laneway.api.streaming import ReplyStreamResponse
from laneway.api.wire import validate
from laneway.dialects.responses import PreviousResponseNotFound, ResponseNotFound
from laneway.dialects.responses.request import ResponsesRequest, translate
from laneway.dialects.responses.response import Turn, from_completion
from laneway.dialects.responses.stream import ResponseEvents
from laneway.errors import UpstreamProtocolError
from laneway.gateway import Gateway
from laneway.operations import Operation
from laneway.providers.base import Reply, ReplyStream
from laneway.routing.dispatch import Served


class ResponsesRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.inbound = Inbound(gateway, name="responses")
        self.store = gateway.responses

    def routes(self) -> list[Route]:
        return [
            Route("/v1/responses", self.create, methods=["POST"], name="responses"),
            Route("/v1/responses/{response_id}", self.retrieve, methods=["GET"]),
            Route("/v1/responses/{response_id}", self.delete, methods=["DELETE"]),
        ]

    async def create(self, request: Request) -> Response:
        inbound = self.inbound
        admitted = inbound.admit(request)
        _, body = await inbound.read_json(request)
        validate(ResponsesRequest, body)
        history = await self._history(body.get("previous_response_id"), admitted.info.caller)
        translated = translate(body, history)
        turn = Turn(body, translated.tools, created_at=int(self.gateway.clock.now()))
        stream = bool(body.get("stream"))
        served = await inbound.serve(request, admitted, Operation.CHAT, translated.body, b"", stream=stream)
        if served is None:
            return CLIENT_GONE
        headers = served_headers(served, admitted.request_id)
        if translated.tools.ignored:
            headers["x-laneway-ignored-tools"] = ",".join(dict.fromkeys(translated.tools.ignored))
        conversation = [*(history or []), *translated.input]
        if isinstance(served.result, Reply):
            return await self._whole(
                served.result, served.lane.backend, turn, admitted, conversation, headers
            )
        return self._streamed(served, turn, admitted, conversation, headers)

    async def _history(self, previous: str | None, caller: str) -> list[dict[str, Any]] | None:
        if previous is None:
            return None
        stored = await self.store.load(previous, caller)
        if stored is None:
            raise PreviousResponseNotFound(
                f"Previous response with id '{previous}' not found.", param="previous_response_id"
            )
        return stored.conversation

    async def _whole(
        self,
        reply: Reply,
        backend: str,
        turn: Turn,
        admitted: Admitted,
        conversation: list[dict[str, Any]],
        headers: dict[str, str],
    ) -> Response:
        try:
            completion = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError(
                f"backend '{backend}' answered with no JSON", backend=backend
            ) from None
        response, answer = from_completion(turn, completion, self.gateway.clock.now(), backend)
        if turn.body.get("store", True) is not False:
            await self.store.save(response, admitted.info.caller, conversation, [answer])
        return Response(orjson.dumps(response), media_type="application/json", headers=headers)

    def _streamed(
        self,
        served: Served[Reply] | Served[ReplyStream],
        turn: Turn,
        admitted: Admitted,
        conversation: list[dict[str, Any]],
        headers: dict[str, str],
    ) -> Response:
        async def store(response: dict[str, Any], answer: dict[str, Any]) -> None:
            await self.store.save(response, admitted.info.caller, conversation, [answer])

        assert not isinstance(served.result, Reply)
        events = ResponseEvents(
            served.result,
            turn,
            now=self.gateway.clock.now,
            on_complete=store if turn.body.get("store", True) is not False else None,
            backend=served.lane.backend,
        )
        return ReplyStreamResponse(  # type: ignore[return-value]
            events, headers, show_lane=admitted.show_lane, error_frame=events.error_frame
        )

    async def retrieve(self, request: Request) -> Response:
        caller = self.inbound.admit(request).info.caller
        response_id = request.path_params["response_id"]
        stored = await self.store.load(response_id, caller)
        if stored is None:
            raise ResponseNotFound(f"No response found with id '{response_id}'.")
        return Response(orjson.dumps(stored.response), media_type="application/json")

    async def delete(self, request: Request) -> Response:
        caller = self.inbound.admit(request).info.caller
        response_id = request.path_params["response_id"]
        if not await self.store.delete(response_id, caller):
            raise ResponseNotFound(f"No response found with id '{response_id}'.")
        body = {"id": response_id, "object": "response", "deleted": True}
        return Response(orjson.dumps(body), media_type="application/json")
