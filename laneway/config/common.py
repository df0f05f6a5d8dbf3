"""What every section of the config is built from: strict frozen models, and the field types
and names they share."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Family = Literal["openai", "ollama", "anthropic", "virtual"]
TierName = Literal["local", "fleet", "cloud", "frontier", "direct"]
Effort = Literal["low", "medium", "high"]
Capability = Literal["chat", "completion", "embedding", "tools", "vision", "reasoning"]
Weight = Annotated[float, Field(ge=0)]
Seconds = Annotated[float, Field(gt=0)]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class Strict(BaseModel):
    """Unknown keys are errors (a typo is never silently ignored); a loaded config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def one_secret(model: BaseModel, field: str) -> None:
    """A secret is given exactly one way: ``FIELD`` inline, ``FIELD_env`` or ``FIELD_hash``."""
    given = [f for f in (field, f"{field}_env", f"{field}_hash") if getattr(model, f)]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {field}, {field}_env, {field}_hash")
    digest = getattr(model, f"{field}_hash")
    if digest and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise ValueError(f"{field}_hash must look like sha256:<64 hex digits>")
