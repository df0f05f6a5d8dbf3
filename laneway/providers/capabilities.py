"""What a model can do, guessed from its name when the provider does not say, and the lane types a
model of each kind serves (operations of the one operation map, ``laneway.operations``)."""

from __future__ import annotations

from laneway.operations import Operation

# A lane's type is the operation it serves; a model serves the operations of its kind. Its
# capabilities include them (a chat lane can "chat").
TEXT_TYPES = frozenset({Operation.CHAT.value, Operation.COMPLETION.value})  # a model that writes text
EMBEDDING_TYPES = frozenset({Operation.EMBEDDING.value})  # a model that embeds

_EMBED_HINTS = ("embed", "bge-", "e5-", "gte-", "minilm")
_VISION_HINTS = (
    "vision",
    "-vl",
    "llava",
    "gpt-4o",
    "gpt-4.1",
    "gpt-5",
    "claude",
    "gemini",
    "pixtral",
    "gemma3",
)
_REASONING_HINTS = ("o1", "o3", "o4", "gpt-5", "r1", "qwq", "thinking", "reason", "deepseek-r")
_TOOL_HINTS = ("gpt-", "claude", "llama3", "llama-3", "qwen", "mistral", "gemini", "command-r", "hermes")


def capabilities_from_name(model: str) -> tuple[set[str], set[str]]:
    """(lane types, capabilities) for a model known only by name."""
    name = model.lower()
    if any(h in name for h in _EMBED_HINTS):
        return set(EMBEDDING_TYPES), set(EMBEDDING_TYPES)
    caps = set(TEXT_TYPES)
    if any(h in name for h in _VISION_HINTS):
        caps.add("vision")
    if any(h in name for h in _REASONING_HINTS):
        caps.add("reasoning")
    if any(h in name for h in _TOOL_HINTS):
        caps.add("tools")
    return set(TEXT_TYPES), caps
