"""Discovery as laneway's providers do it, against the sim speaking each server's model list on
loopback: OpenAI, vLLM, OpenRouter (under /api/v1), Ollama (tags + show + ps) and Anthropic.

The sim's catalogue guesses capabilities from names with hints of its own, and a few models
below are chosen where those differ from the providers' name hints (``qwen/qwen3-30b-a3b``
reasons, ``google/gemma-3-27b-it`` sees): they pass only if the provider read the catalogue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest

from laneway.config.schema import BackendConfig
from laneway.errors import UpstreamTimeout
from laneway.providers.anthropic import AnthropicProvider
from laneway.providers.base import Call, ModelInfo
from laneway.providers.ollama import OllamaProvider
from laneway.providers.openai import OpenAIProvider, model_info
from laneway.sim.app import SimApp, build_sim_app
from laneway.sim.options import SimOptions
from laneway.testing import ServerThread

pytestmark = pytest.mark.anyio

KEY = "sim-secret"
CHAT = frozenset({"chat", "completion"})
EMBEDDING = frozenset({"embedding"})
PROVIDERS: dict[str, Any] = {
    "openai": OpenAIProvider,
    "ollama": OllamaProvider,
    "anthropic": AnthropicProvider,
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextmanager
def sim(**options: Any) -> Iterator[tuple[SimApp, str]]:
    app = build_sim_app(SimOptions(**options))
    with ServerThread(app) as url:
        yield app, url


@asynccontextmanager
async def provider(family: str, url: str, **config: Any) -> AsyncIterator[Any]:
    adapter = PROVIDERS[family](f"test-{family}", BackendConfig(provider=family, base_url=url, **config))
    try:
        yield adapter
    finally:
        await adapter.aclose()


async def discover(family: str, url: str, **config: Any) -> dict[str, ModelInfo]:
    async with provider(family, url, **config) as adapter:
        return {m.id: m for m in await adapter.list_models()}


def chat_call(model: str) -> Call:
    return Call(model=model, body={"model": model, "messages": [{"role": "user", "content": "hi"}]})


# --- OpenAI family ------------------------------------------------------------------------------


async def test_plain_openai_says_only_names() -> None:
    with sim(api_key=KEY) as (_, url):
        models = await discover("openai", url + "/v1", api_key=KEY)
    assert list(models) == ["gpt-4o-mini", "text-embedding-3-small"]
    chat, embed = models["gpt-4o-mini"], models["text-embedding-3-small"]
    assert chat.types == CHAT
    assert chat.capabilities == {"chat", "completion", "vision", "tools"}  # from the name
    assert embed.types == EMBEDDING
    assert embed.capabilities == EMBEDDING
    assert chat.context_length is None  # OpenAI does not say
    assert chat.loaded is None


async def test_vllm_reports_its_context_window() -> None:
    names = ["meta-llama/Llama-3.1-8B-Instruct", "nomic-ai/nomic-embed-text-v1.5"]
    with sim(models_format="vllm", models=names, context_length=32768) as (_, url):
        models = await discover("openai", url)  # api_root adds /v1
    assert list(models) == names
    llama, embed = models[names[0]], models[names[1]]
    assert llama.types == CHAT
    assert llama.capabilities == {"chat", "completion", "tools"}
    assert llama.context_length == 32768
    assert embed.types == EMBEDDING
    assert embed.context_length == 32768


OPENROUTER = [
    "meta-llama/llama-3.1-8b-instruct:free",
    "openai/gpt-4o",
    "qwen/qwen3-30b-a3b",
    "google/gemma-3-27b-it",
    "openai/text-embedding-3-small",
]


async def test_openrouter_catalogue_under_api_v1() -> None:
    with sim(models_format="openrouter", models=OPENROUTER, context_length=131072, api_key=KEY) as (app, url):
        async with provider("openai", url + "/api/v1", api_key=KEY) as openrouter:
            models = {m.id: m for m in await openrouter.list_models()}
            reply = await openrouter.chat(chat_call("meta-llama/llama-3.1-8b-instruct:free"))
        by_path = dict(app.stats.requests_by_path)
    assert list(models) == OPENROUTER
    assert all(m.context_length == 131072 for m in models.values())
    free = models["meta-llama/llama-3.1-8b-instruct:free"]
    assert free.types == CHAT
    assert free.capabilities == {"chat", "completion", "tools"}
    assert models["openai/gpt-4o"].capabilities == {"chat", "completion", "tools", "vision"}
    assert models["qwen/qwen3-30b-a3b"].capabilities == {"chat", "completion", "tools", "reasoning"}
    assert models["google/gemma-3-27b-it"].capabilities == {"chat", "completion", "tools", "vision"}
    embed = models["openai/text-embedding-3-small"]
    assert (embed.types, embed.capabilities) == (EMBEDDING, EMBEDDING)
    assert b"Hello from meta-llama/llama-3.1-8b-instruct:free" in reply.body
    assert by_path == {"/api/v1/models": 1, "/api/v1/chat/completions": 1}


def test_model_info_reads_real_catalogue_entries() -> None:
    """Entries as vLLM and OpenRouter have sent them, older shapes included."""
    legacy = model_info(  # OpenRouter before input/output_modalities; the free provider's window is smaller
        {
            "id": "meta-llama/llama-3.2-11b-vision-instruct:free",
            "context_length": 131072,
            "architecture": {
                "modality": "text+image->text",
                "tokenizer": "Llama3",
                "instruct_type": "llama3",
            },
            "top_provider": {"context_length": 8192, "max_completion_tokens": 4096, "is_moderated": False},
            "per_request_limits": None,
        }
    )
    assert legacy is not None
    assert "vision" in legacy.capabilities
    assert legacy.context_length == 131072
    older = model_info({"id": "mistralai/mistral-7b", "architecture": {"modality": "text"}})
    assert older is not None
    assert older.types == CHAT
    only_top = model_info({"id": "a/b", "context_length": None, "top_provider": {"context_length": 32768}})
    assert only_top is not None
    assert only_top.context_length == 32768
    unnamed_embedder = model_info(  # no embedding hint in the name: the modalities decide
        {
            "id": "sentence-transformers/all-mpnet-base-v2",
            "architecture": {
                "modality": "text->embeddings",
                "input_modalities": ["text"],
                "output_modalities": ["embeddings"],
            },
        }
    )
    assert unnamed_embedder is not None
    assert unnamed_embedder.types == EMBEDDING
    painter = model_info(
        {"id": "x/painter", "architecture": {"input_modalities": ["text"], "output_modalities": ["image"]}}
    )
    assert painter is not None
    assert painter.types == set()
    no_tools = model_info({"id": "meta-llama/llama-3-8b", "supported_parameters": ["max_tokens"]})
    assert no_tools is not None
    assert "tools" not in no_tools.capabilities  # the name hints at tools; OpenRouter says no
    alias = model_info(  # vllm serve /models/Qwen2.5-VL-7B-Instruct --served-model-name llm
        {"id": "llm", "object": "model", "root": "/models/Qwen2.5-VL-7B-Instruct", "max_model_len": 32768}
    )
    assert alias is not None
    assert {"vision", "tools"} <= alias.capabilities
    assert alias.context_length == 32768
    lora = model_info(
        {"id": "sql-lora", "root": "/adapters/sql", "parent": "meta-llama/Llama-3.1-8B-Instruct"}
    )
    assert lora is not None
    assert "tools" in lora.capabilities
    assert model_info({"id": "m", "max_model_len": True}) == ModelInfo("m", CHAT, frozenset(CHAT))


async def test_a_hanging_discovery_times_out_while_inference_answers() -> None:
    with sim(hang_discovery=True, models_format="vllm") as (app, url):
        async with provider("openai", url, timeout=0.3) as backend:
            started = time.monotonic()
            with pytest.raises(UpstreamTimeout):
                await backend.list_models()
            assert time.monotonic() - started >= 0.3
            assert (await backend.chat(chat_call("gpt-4o-mini"))).body
            assert app.stats.requests_by_path["/v1/models"] == 1
            for _ in range(200):  # the sim lets go of the request once the client gave up
                if app.stats.active_hangs == 0:
                    break
                await asyncio.sleep(0.01)
            assert app.stats.active_hangs == 0
            app.options.hang_discovery = False
            assert [m.context_length for m in await backend.list_models()] == [8192, 8192]


# --- Ollama -------------------------------------------------------------------------------------


async def test_ollama_reports_which_models_are_loaded() -> None:
    with sim(family="ollama", models=["llama3:8b", "nomic-embed-text:latest"]) as (app, url):
        async with provider("ollama", url) as ollama:
            before = {m.id: m for m in await ollama.list_models()}
            await ollama.chat(chat_call("llama3:8b"))
            after = {m.id: m for m in await ollama.list_models()}
        calls = dict(app.stats.requests_by_path)
    assert list(before) == ["llama3:8b", "nomic-embed-text:latest"]
    llama, embed = before["llama3:8b"], before["nomic-embed-text:latest"]
    assert (llama.types, llama.capabilities) == (CHAT, {"chat", "completion", "tools"})
    assert (embed.types, embed.capabilities) == (EMBEDDING, EMBEDDING)
    assert llama.context_length == embed.context_length == 8192
    assert (llama.loaded, embed.loaded) == (False, False)
    assert (after["llama3:8b"].loaded, after["nomic-embed-text:latest"].loaded) == (True, False)
    assert calls["/api/ps"] == 2
    assert calls["/api/show"] == 4


async def test_ollama_without_a_working_ps_still_lists_its_models() -> None:
    with sim(
        family="ollama", models=["llama3:8b", "nomic-embed-text:latest"], fail_metadata_paths=["/api/ps"]
    ) as (
        app,
        url,
    ):
        models = await discover("ollama", url)
        assert app.stats.failures_injected == 1
    assert list(models) == ["llama3:8b", "nomic-embed-text:latest"]
    assert all(m.loaded is None for m in models.values())
    assert models["llama3:8b"].context_length == 8192
    assert models["nomic-embed-text:latest"].types == EMBEDDING


# --- Anthropic ----------------------------------------------------------------------------------


async def test_anthropic_context_window_and_capabilities_come_from_the_list() -> None:
    names = ["claude-sonnet-4-6", "claude-3-5-haiku-20241022"]
    with sim(family="anthropic", api_key=KEY, models=names, context_length=1_000_000) as (_, url):
        models = await discover("anthropic", url, api_key=KEY)
    assert list(models) == names
    sonnet, haiku = models["claude-sonnet-4-6"], models["claude-3-5-haiku-20241022"]
    assert sonnet.types == haiku.types == {"chat"}
    assert sonnet.capabilities == {"chat", "tools", "vision", "reasoning"}
    assert haiku.capabilities == {"chat", "tools", "vision"}
    assert sonnet.context_length == haiku.context_length == 1_000_000  # max_input_tokens, not a default
