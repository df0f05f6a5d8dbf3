"""The model lists of the OpenAI-compatible servers whose ``/v1/models`` says more than OpenAI's.

OpenAI lists ``{id, object, created, owned_by}`` and nothing a router could use. vLLM's
``ModelCard`` adds the served weights (``root``, ``parent`` for a LoRA adapter), the context
window (``max_model_len``) and a vestigial ``permission`` list. OpenRouter's catalogue
(``GET /api/v1/models``) describes each model: modalities, pricing as decimal strings in USD per
token, the top provider's limits and the request parameters it accepts. The shapes follow
vLLM's ``protocol.py`` and OpenRouter's Models API reference.

OpenRouter knows what each model can do; the sim has only names, so it guesses from them with
hints of its own (not laneway's provider hints: a test must be able to tell whether the
provider read the catalogue or guessed from the name).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from laneway.sim.options import is_embedding_model

CATALOGUE_CREATED = 1_721_260_800  # when the simulated catalogue entries were "added"

_VISION_HINTS = (
    "vision",
    "llava",
    "-vl",
    "gpt-4o",
    "gpt-4.1",
    "gpt-5",
    "gemma-3",
    "pixtral",
    "gemini",
    "claude",
)
_REASONING_HINTS = ("r1", "qwen3", "think", "reason", "/o1", "/o3", "/o4", "gpt-5")
# (name hint, tokenizer, instruct_type): OpenRouter's values for the families a test is likely to use
_TOKENIZERS = (
    ("llama-3", "Llama3", "llama3"),
    ("llama3", "Llama3", "llama3"),
    ("qwen", "Qwen", "chatml"),
    ("deepseek", "DeepSeek", None),
    ("mistral", "Mistral", None),
    ("gpt", "GPT", None),
    ("claude", "Claude", None),
    ("gemini", "Gemini", None),
    ("gemma", "Gemini", "gemma"),
)
_COMMON_PARAMETERS = [
    "frequency_penalty",
    "max_tokens",
    "presence_penalty",
    "response_format",
    "seed",
    "stop",
    "structured_outputs",
    "temperature",
    "top_p",
]


def vllm_body(models: list[str], created: int, max_model_len: int) -> bytes:
    """vLLM's ``ModelList``: every served model is its own root, with no parent (not a LoRA)."""
    data = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": name,
            "parent": None,
            "max_model_len": max_model_len,
            "permission": [_vllm_permission(name, created)],
        }
        for name in models
    ]
    return orjson.dumps({"object": "list", "data": data})


def _vllm_permission(name: str, created: int) -> dict[str, Any]:
    # vLLM's ModelPermission defaults; the id is a random uuid4 hex there, a stable digest here
    return {
        "id": f"modelperm-{hashlib.sha256(name.encode()).hexdigest()[:32]}",
        "object": "model_permission",
        "created": created,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }


def openrouter_body(models: list[str], context_length: int) -> bytes:
    """OpenRouter's catalogue: ``{"data": [...]}``, no ``object`` key."""
    return orjson.dumps({"data": [openrouter_entry(name, context_length) for name in models]})


def openrouter_entry(model: str, context_length: int) -> dict[str, Any]:
    name = model.lower()
    slug, _, variant = model.partition(":")  # "meta-llama/llama-3.1-8b-instruct:free"
    free = variant == "free"
    embeds = is_embedding_model(name)
    vision = not embeds and any(hint in name for hint in _VISION_HINTS)
    reasons = not embeds and any(hint in name for hint in _REASONING_HINTS)
    inputs = ["text", "image"] if vision else ["text"]
    outputs = ["embeddings"] if embeds else ["text"]
    tokenizer, instruct_type = next(
        ((tok, kind) for hint, tok, kind in _TOKENIZERS if hint in name), ("Other", None)
    )
    if embeds:
        parameters: list[str] = []
    else:
        parameters = [*_COMMON_PARAMETERS, "tool_choice", "tools"]
        if reasons:
            parameters += ["include_reasoning", "reasoning"]
        parameters.sort()
    price = "0" if free else "0.0000001"
    return {
        "id": model,
        "canonical_slug": slug,  # variants (":free", ":nitro"...) share their model's slug
        "name": _display_name(slug) + (f" ({variant})" if variant else ""),
        "created": CATALOGUE_CREATED,
        "description": f"{_display_name(slug)}, as simulated by laneway sim.",
        "context_length": context_length,
        "architecture": {
            "modality": f"{'+'.join(inputs)}->{'+'.join(outputs)}",
            "input_modalities": inputs,
            "output_modalities": outputs,
            "tokenizer": tokenizer,
            "instruct_type": instruct_type,
        },
        "pricing": {
            "prompt": price,
            "completion": "0" if free or embeds else "0.0000002",
            "request": "0",
            "image": "0",
            "web_search": "0",
            "internal_reasoning": "0",
        },
        "top_provider": {
            "context_length": context_length,
            "max_completion_tokens": None if embeds else min(context_length, 16_384),
            "is_moderated": slug.startswith(("openai/", "anthropic/")),
        },
        "per_request_limits": None,
        "supported_parameters": parameters,
    }


def _display_name(slug: str) -> str:
    """``meta-llama/llama-3.1-8b-instruct`` -> ``Meta Llama: Llama 3.1 8B Instruct``."""
    author, _, model = slug.rpartition("/")
    words = [
        w.upper() if w[:-1].isdigit() and w[-1:] in ("b", "m") else w.capitalize() for w in model.split("-")
    ]
    title = " ".join(words)
    return f"{author.replace('-', ' ').title()}: {title}" if author else title
