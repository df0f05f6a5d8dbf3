"""End to end: the official ``ollama`` Python client against laneway's Ollama API, through the
router to `laneway sim` in each of its three personalities (so an Ollama client reaches OpenAI and
Anthropic lanes too). What the client parses is what a real Ollama client would see."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from pydantic import BaseModel

from tests.conftest import CLIENT_KEY, RunningGateway, Sim, three_family_config

FAMILY_MODELS = [
    pytest.param("llama3.2:3b", "gpu-1", id="ollama"),
    pytest.param("gpt-4o-mini", "oai", id="openai"),
    pytest.param("claude-sonnet-4-6", "claude", id="anthropic"),
]
# The families whose lanes take a JSON format natively (Anthropic's is emulated: tested below).
JSON_FAMILIES = FAMILY_MODELS[:2]
# A 1x1 PNG
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
HI = [{"role": "user", "content": "hi"}]
USER = b'"messages": [{"role": "user"}]'
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city"}},
            "required": ["city"],
        },
    },
}


def client(gw: RunningGateway, key: str | None = None) -> ollama.Client:
    return ollama.Client(host=gw.url, headers={"Authorization": f"Bearer {key or gw.key}"})


@pytest.fixture
def loaded_gw(gateway_factory: Any, three_sims: dict[str, Sim], tmp_path: Path) -> RunningGateway:
    """The gateway in front of the three sims, the Ollama one with a model in memory already."""
    three_sims["ollama"].app.loaded["llama3.2:3b"] = None
    running: RunningGateway = gateway_factory(three_family_config(three_sims, tmp_path / "gw"), three_sims)
    return running


# --- describing ------------------------------------------------------------------------------------


def test_version_answers_without_a_key(gw: RunningGateway) -> None:
    answer = httpx.get(gw.url + "/api/version")
    assert answer.status_code == 200
    major, minor, _ = answer.json()["version"].split(".")
    assert (int(major), int(minor)) >= (0, 12)


def test_list_has_every_family_and_every_route(gw: RunningGateway) -> None:
    listed = client(gw).list()
    by_name = {m.model: m for m in listed.models}
    for name in ("llama3.2:3b", "nomic-embed-text:latest", "gpt-4o-mini", "claude-sonnet-4-6"):
        assert name in by_name
    for route in ("smart", "fast", "embed"):
        assert route in by_name
    llama = by_name["llama3.2:3b"]
    assert llama.details is not None
    assert llama.details.family == "ollama"
    assert llama.details.format == "gguf"
    assert llama.modified_at is not None
    assert len(llama.digest or "") == 64
    assert by_name["claude-sonnet-4-6"].details.family == "anthropic"  # type: ignore[union-attr]
    raw = httpx.get(gw.url + "/api/tags", headers={"Authorization": f"Bearer {gw.key}"}).json()
    extra = {m["name"]: m["laneway"] for m in raw["models"]}
    assert extra["gpt-4o-mini"]["backends"] == ["oai"]
    assert extra["smart"]["kind"] == "route"
    assert extra["smart"]["backends"] == ["claude", "oai"]


def test_show_says_what_a_model_can_do(gw: RunningGateway) -> None:
    ollama_client = client(gw)
    llama = ollama_client.show("llama3.2:3b")
    assert llama.capabilities is not None
    assert {"completion", "tools"} <= set(llama.capabilities)
    assert llama.modelinfo is not None
    assert llama.modelinfo["ollama.context_length"] == 8192  # the sim's, as discovery read it
    assert llama.template == ""
    assert llama.parameters == ""
    claude = ollama_client.show("claude-sonnet-4-6")
    assert claude.capabilities is not None
    assert {"completion", "tools", "vision"} <= set(claude.capabilities)
    embedder = ollama_client.show("nomic-embed-text:latest")
    assert embedder.capabilities == ["embedding"]
    route = ollama_client.show("smart")
    assert route.capabilities is not None
    assert "completion" in route.capabilities
    assert route.details is not None
    assert route.details.families == ["anthropic", "openai"]


def test_show_adds_latest_as_ollama_clients_do(gw: RunningGateway) -> None:
    shown = client(gw).show("gpt-4o-mini:latest")
    assert shown.capabilities is not None
    assert "completion" in shown.capabilities


def test_show_of_an_unknown_model_is_ollamas_404(gw: RunningGateway) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client(gw).show("no-such-model")
    assert caught.value.status_code == 404
    assert caught.value.error == "model 'no-such-model' not found"


def test_ps_lists_the_models_in_memory(loaded_gw: RunningGateway) -> None:
    running = client(loaded_gw).ps()
    names = [m.model for m in running.models]
    assert names == ["llama3.2:3b"]
    assert running.models[0].expires_at is not None
    assert running.models[0].context_length == 8192


# --- chat --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "backend"), FAMILY_MODELS)
def test_chat_whole_each_family(gw: RunningGateway, model: str, backend: str) -> None:
    answer = client(gw).chat(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
        stream=False,
    )
    assert answer.model == model
    assert answer.message.role == "assistant"
    assert answer.message.content is not None
    assert answer.message.content.startswith(f"Hello from {model}")
    assert "You said: Say hello" in answer.message.content
    assert answer.done is True
    assert answer.done_reason == "stop"
    assert (answer.prompt_eval_count or 0) > 0
    assert (answer.eval_count or 0) > 0
    assert (answer.total_duration or 0) > 0
    assert answer.created_at is not None
    assert answer.created_at.endswith("Z")
    served = httpx.post(
        gw.url + "/api/chat",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False},
        headers={"Authorization": f"Bearer {gw.key}"},
    )
    assert served.headers["x-laneway-backend"] == backend
    assert served.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize(("model", "backend"), FAMILY_MODELS)
def test_chat_streams_by_default_each_family(gw: RunningGateway, model: str, backend: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "Stream to me"}]}  # no "stream"
    with httpx.stream(
        "POST", gw.url + "/api/chat", json=body, headers={"Authorization": f"Bearer {gw.key}"}
    ) as served:
        assert served.headers["content-type"] == "application/x-ndjson"
        assert served.headers["x-laneway-backend"] == backend
        lines = [line for line in served.iter_lines() if line]
    assert len(lines) > 2
    asked = [{"role": "user", "content": "Stream to me"}]
    parts = list(client(gw).chat(model=model, messages=asked, stream=True))
    assert all(not p.done for p in parts[:-1])
    last = parts[-1]
    assert last.done is True
    assert last.done_reason == "stop"
    assert (last.eval_count or 0) > 0
    assert (last.prompt_eval_count or 0) > 0
    text = "".join(p.message.content or "" for p in parts)
    assert text.startswith(f"Hello from {model}")
    assert "You said: Stream to me" in text


@pytest.mark.parametrize(("model", "backend"), FAMILY_MODELS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_tools_over_two_turns_each_family(gw: RunningGateway, model: str, backend: str, stream: bool) -> None:
    ollama_client = client(gw)
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    if stream:
        parts = list(ollama_client.chat(model=model, messages=messages, tools=[WEATHER], stream=True))
        calls = [call for p in parts for call in (p.message.tool_calls or [])]
        assert parts[-1].done is True
        turn = ollama.Message(role="assistant", content="", tool_calls=calls)
    else:
        first = ollama_client.chat(model=model, messages=messages, tools=[WEATHER])
        calls = list(first.message.tool_calls or [])
        assert first.done_reason == "stop"
        turn = first.message
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == {"city": "sim"}
    messages += [turn, {"role": "tool", "tool_name": "get_weather", "content": "sunny and 21C"}]
    second = ollama_client.chat(model=model, messages=messages, tools=[WEATHER])
    assert not second.message.tool_calls
    assert "The tool said: sunny and 21C" in (second.message.content or "")


def test_tools_from_a_python_function(gw: RunningGateway) -> None:
    def add_two_numbers(a: int, b: int) -> int:
        """Add two numbers.

        Args:
          a: The first number
          b: The second number

        Returns:
          int: The sum
        """
        return a + b

    answer = client(gw).chat(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "1+2?"}], tools=[add_two_numbers]
    )
    assert answer.message.tool_calls is not None
    assert answer.message.tool_calls[0].function.name == "add_two_numbers"


@pytest.fixture
def able_gw(gateway_factory: Any, sim_factory: Any) -> RunningGateway:
    """An Ollama whose /api/show says what its models can do: llava sees, qwen3 thinks, llama3.2
    does neither (as a real Ollama says of them)."""
    sim = sim_factory(family="ollama", models=["llava:7b", "qwen3:8b", "llama3.2:3b"])
    config = {
        "auth": {"keys": [{"name": "tests", "key": CLIENT_KEY}]},
        "backends": {"gpu-1": {"provider": "ollama", "base_url": sim.url}},
    }
    running: RunningGateway = gateway_factory(config, {"ollama": sim})
    return running


IMAGES = [{"role": "user", "content": "What is this?", "images": [PNG, PNG]}]


@pytest.mark.parametrize(("model", "backend"), FAMILY_MODELS[1:])
def test_images_each_family(gw: RunningGateway, model: str, backend: str) -> None:
    answer = client(gw).chat(model=model, messages=IMAGES)
    assert "I received 2 images." in (answer.message.content or "")


def test_images_on_ollama_lanes_that_see_and_not_on_those_that_do_not(able_gw: RunningGateway) -> None:
    answer = client(able_gw).chat(model="llava:7b", messages=IMAGES)
    assert "I received 2 images." in (answer.message.content or "")
    with pytest.raises(ollama.ResponseError) as refused:  # no lane of it sees: said before any call
        client(able_gw).chat(model="llama3.2:3b", messages=IMAGES)
    assert refused.value.status_code == 422
    assert "needs vision" in refused.value.error
    assert able_gw.sims["ollama"].stats.inference_requests == 1


class Person(BaseModel):
    name: str
    age: int


def test_format_a_schema_on_an_anthropic_lane(gw: RunningGateway) -> None:
    # Anthropic has no JSON mode: laneway forces one tool whose input is the answer
    answer = client(gw).chat(
        model="claude-sonnet-4-6",
        messages=[{"role": "user", "content": "Who?"}],
        format=Person.model_json_schema(),
    )
    person = Person.model_validate_json(answer.message.content or "")
    assert isinstance(person.age, int)
    assert not answer.message.tool_calls


@pytest.mark.parametrize(("model", "backend"), JSON_FAMILIES)
def test_format_json_and_a_schema(gw: RunningGateway, model: str, backend: str) -> None:
    gw.sims[backend_family(backend)].options.reply = '{"name": "Ada", "age": 36}'
    ollama_client = client(gw)
    answer = ollama_client.chat(
        model=model, messages=[{"role": "user", "content": "Who?"}], format=Person.model_json_schema()
    )
    assert Person.model_validate_json(answer.message.content or "") == Person(name="Ada", age=36)
    plain = ollama_client.chat(model=model, messages=[{"role": "user", "content": "Who?"}], format="json")
    assert Person.model_validate_json(plain.message.content or "").age == 36


def backend_family(backend: str) -> str:
    return {"gpu-1": "ollama", "oai": "openai", "claude": "anthropic"}[backend]


@pytest.mark.parametrize(("model", "backend"), FAMILY_MODELS)
def test_options_carry_over(gw: RunningGateway, model: str, backend: str) -> None:
    answer = client(gw).chat(
        model=model,
        messages=[{"role": "user", "content": "Tell me a long story about a lighthouse"}],
        options={"temperature": 0.2, "top_p": 0.9, "seed": 7, "num_predict": 3, "num_ctx": 4096},
    )
    assert answer.done_reason == "length"
    assert answer.eval_count == 3
    stopped = client(gw).chat(
        model=model,
        messages=[{"role": "user", "content": "Say hello"}],
        options=ollama.Options(stop=["You said"], repeat_penalty=1.1),
    )
    assert "You said" not in (stopped.message.content or "")
    assert (stopped.message.content or "").startswith("Hello from")


def test_think_on_a_model_that_cannot_is_answered_without(able_gw: RunningGateway) -> None:
    # a real Ollama answers 400 to think: true here; laneway leaves thinking off instead
    answer = client(able_gw).chat(
        model="llama3.2:3b", messages=[{"role": "user", "content": "hm"}], think=True
    )
    assert not answer.message.thinking
    assert (answer.message.content or "").startswith("Hello from llama3.2:3b")


@pytest.mark.parametrize("model", ["qwen3:8b", "claude-sonnet-4-6"])
def test_think_returns_the_thinking(gw: RunningGateway, able_gw: RunningGateway, model: str) -> None:
    ollama_client = client(able_gw if model.startswith("qwen") else gw)
    asked = [{"role": "user", "content": "Think first"}]
    answer = ollama_client.chat(model=model, messages=asked, think=True)
    assert answer.message.thinking
    assert "think" in answer.message.thinking
    assert answer.message.content
    parts = list(ollama_client.chat(model=model, messages=asked, think="low", stream=True))
    assert parts[-1].done is True
    if model.startswith("claude"):  # the Ollama sim streams no thinking (its whole answers do)
        assert "".join(p.message.thinking or "" for p in parts).strip()
    unthought = ollama_client.chat(model=model, messages=asked, think=False)
    assert not unthought.message.thinking


def test_a_chat_without_messages_loads_the_model(gw: RunningGateway) -> None:
    answer = client(gw).chat(model="llama3.2:3b", messages=[])
    assert answer.done is True
    assert answer.done_reason == "load"
    assert gw.sims["ollama"].stats.inference_requests == 0


@pytest.mark.anyio
async def test_async_client_chat_and_stream(gw: RunningGateway) -> None:
    aclient = ollama.AsyncClient(host=gw.url, headers={"Authorization": f"Bearer {gw.key}"})
    answer = await aclient.chat(model="smart", messages=[{"role": "user", "content": "async hello"}])
    assert answer.model == "smart"
    assert (answer.message.content or "").startswith("Hello from claude-sonnet-4-6")
    stream = await aclient.chat(model="fast", messages=[{"role": "user", "content": "async"}], stream=True)
    parts = [part async for part in stream]
    assert parts[-1].done is True
    assert "".join(p.message.content or "" for p in parts).startswith("Hello from llama3.2:3b")


# --- generate ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "backend"), FAMILY_MODELS)
def test_generate_whole_and_streamed_each_family(gw: RunningGateway, model: str, backend: str) -> None:
    ollama_client = client(gw)
    answer = ollama_client.generate(model=model, prompt="Why is the sky blue?", system="Be brief.")
    assert answer.done is True
    assert answer.done_reason == "stop"
    assert (answer.response or "").startswith(f"Hello from {model}")
    assert "You said: Why is the sky blue?" in (answer.response or "")
    assert (answer.eval_count or 0) > 0
    parts = list(ollama_client.generate(model=model, prompt="Stream it", stream=True))
    assert parts[-1].done is True
    assert (parts[-1].eval_count or 0) > 0
    assert "".join(p.response or "" for p in parts).startswith(f"Hello from {model}")


def test_generate_with_images_and_think(gw: RunningGateway) -> None:
    answer = client(gw).generate(model="claude-sonnet-4-6", prompt="Describe", images=[PNG], think=True)
    assert "I received 1 image." in (answer.response or "")
    assert answer.thinking


@pytest.mark.parametrize(("model", "backend"), JSON_FAMILIES)
def test_raw_generate_is_a_plain_completion(gw: RunningGateway, model: str, backend: str) -> None:
    ollama_client = client(gw)
    answer = ollama_client.generate(model=model, prompt="Once upon a time", raw=True)
    assert (answer.response or "").startswith(f"Hello from {model}")
    parts = list(ollama_client.generate(model=model, prompt="Once upon a time", raw=True, stream=True))
    assert parts[-1].done is True
    assert "".join(p.response or "" for p in parts).startswith(f"Hello from {model}")


def test_generate_without_a_prompt_loads_the_model(gw: RunningGateway) -> None:
    answer = client(gw).generate(model="gpt-4o-mini")
    assert answer.done_reason == "load"
    assert answer.response == ""
    with pytest.raises(ollama.ResponseError) as caught:
        client(gw).generate(model="no-such-model")
    assert caught.value.status_code == 404


def test_generate_refuses_what_it_cannot_honour(gw: RunningGateway) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client(gw).generate(model="llama3.2:3b", prompt="hi", context=[1, 2, 3])
    assert caught.value.status_code == 422
    assert "context" in caught.value.error
    with pytest.raises(ollama.ResponseError) as caught:
        client(gw).generate(model="llama3.2:3b", prompt="hi", template="{{ .Prompt }}")
    assert caught.value.status_code == 422


# --- embeddings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["nomic-embed-text:latest", "text-embedding-3-small", "embed"])
def test_embed_and_embeddings(gw: RunningGateway, model: str) -> None:
    ollama_client = client(gw)
    embedded = ollama_client.embed(model=model, input=["first text", "second text"])
    assert embedded.model == model
    assert len(embedded.embeddings) == 2
    assert all(len(vector) == 16 for vector in embedded.embeddings)
    assert embedded.embeddings[0] != embedded.embeddings[1]
    assert (embedded.prompt_eval_count or 0) > 0
    one = ollama_client.embed(model=model, input="first text")
    assert one.embeddings == [embedded.embeddings[0]]
    legacy = ollama_client.embeddings(model=model, prompt="first text")
    assert list(legacy.embedding) == pytest.approx(embedded.embeddings[0])


# --- errors ----------------------------------------------------------------------------------------------


def test_unknown_model_is_a_404(gw: RunningGateway) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client(gw).chat(model="no-such-model", messages=HI)
    assert caught.value.status_code == 404
    assert "no-such-model" in caught.value.error
    with pytest.raises(ollama.ResponseError) as caught:
        list(client(gw).chat(model="no-such-model", messages=HI, stream=True))
    assert caught.value.status_code == 404


def test_a_wrong_key_is_a_401(gw: RunningGateway) -> None:
    for call in (
        lambda c: c.list(),
        lambda c: c.chat(model="llama3.2:3b", messages=[{"role": "user", "content": "hi"}]),
        lambda c: c.show("llama3.2:3b"),
    ):
        with pytest.raises(ollama.ResponseError) as caught:
            call(client(gw, key="wrong-key"))
        assert caught.value.status_code == 401


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model is required"),
        (b'{"model": "llama3.2:3b", "messages": "hi"}', "'messages' must be a list"),
        (b'{"model": "llama3.2:3b", "messages": [{"role": "robot", "content": "hi"}]}', "role must be"),
        (b'{"model": "llama3.2:3b", ' + USER + b', "options": {"temperature": "hot"}}', "number"),
        (b'{"model": "llama3.2:3b", ' + USER + b', "options": {"temperature": 9}}', "temperature"),
        (b'{"model": "llama3.2:3b", ' + USER + b', "stream": "yes"}', "'stream'"),
        (b'{"model": "llama3.2:3b", ' + USER + b', "format": "xml"}', "'format'"),
        (b'{"model": "llama3.2:3b", ' + USER + b', "think": "hard"}', "'think'"),
    ],
)
def test_a_bad_body_is_a_400_in_ollamas_shape(gw: RunningGateway, body: bytes, words: str) -> None:
    answer = httpx.post(gw.url + "/api/chat", content=body, headers={"Authorization": f"Bearer {gw.key}"})
    assert answer.status_code == 400
    error = answer.json()
    assert list(error) == ["error"]
    assert words in error["error"]


def test_paths_and_methods_it_does_not_serve(gw: RunningGateway) -> None:
    headers = {"Authorization": f"Bearer {gw.key}"}
    unknown = httpx.get(gw.url + "/api/nothing-here", headers=headers)
    assert unknown.status_code == 404
    assert list(unknown.json()) == ["error"]
    wrong_method = httpx.get(gw.url + "/api/chat", headers=headers)
    assert wrong_method.status_code == 405
    assert list(wrong_method.json()) == ["error"]
    with pytest.raises(ollama.ResponseError) as caught:
        client(gw).pull("llama3.2:3b")
    assert caught.value.status_code == 501
    assert "does not manage models" in caught.value.error
    with pytest.raises(ollama.ResponseError) as caught:
        client(gw).delete("llama3.2:3b")
    assert caught.value.status_code == 501


def test_a_failure_mid_stream_ends_with_an_error_line(gw: RunningGateway) -> None:
    gw.sims["ollama"].options.drop_after_chunks = 3
    parts: list[ollama.ChatResponse] = []
    stream = client(gw).chat(
        model="llama3.2:3b", messages=[{"role": "user", "content": "a long answer please"}], stream=True
    )
    with pytest.raises(ollama.ResponseError) as caught:
        parts.extend(stream)
    assert parts
    assert not any(p.done for p in parts)
    assert "Request id" in caught.value.error
    body = {"model": "llama3.2:3b", "messages": [{"role": "user", "content": "again"}]}
    with httpx.stream(
        "POST", gw.url + "/api/chat", json=body, headers={"Authorization": f"Bearer {gw.key}"}
    ) as served:
        lines = [line for line in served.iter_lines() if line]
    assert list(httpx.Response(200, content=lines[-1]).json()) == ["error"]


def test_the_access_log_says_ollama_and_the_operation(gw: RunningGateway, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="laneway.access")
    headers = {"Authorization": f"Bearer {gw.key}"}
    calls = {
        "chat": ("/api/chat", {"model": "fast", "messages": HI, "stream": False}),
        "generate": ("/api/generate", {"model": "gpt-4o-mini", "prompt": "hi", "stream": False}),
        "raw": ("/api/generate", {"model": "gpt-4o-mini", "prompt": "hi", "raw": True, "stream": False}),
        "embed": ("/api/embed", {"model": "embed", "input": "hi"}),
    }
    for name, (path, body) in calls.items():
        answer = httpx.post(gw.url + path, json=body, headers={**headers, "x-request-id": f"ollama-{name}"})
        assert answer.status_code == 200, answer.text
    logged = {
        record.request_id: record
        for record in caplog.records
        if record.name == "laneway.access" and str(getattr(record, "request_id", "")).startswith("ollama-")
    }
    operations = {rid: (r.dialect, r.operation, r.requested) for rid, r in logged.items()}
    assert operations == {
        "ollama-chat": ("ollama", "chat", "fast"),
        "ollama-generate": ("ollama", "chat", "gpt-4o-mini"),
        "ollama-raw": ("ollama", "completion", "gpt-4o-mini"),
        "ollama-embed": ("ollama", "embedding", "embed"),
    }
    assert all((r.prompt_tokens or 0) > 0 for r in logged.values())
