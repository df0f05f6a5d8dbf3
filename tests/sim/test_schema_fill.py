"""The sim fills a JSON schema faithfully: what pydantic models (the schemas instructor,
pydantic-ai and the openai SDK's ``.parse`` send) accept, and the sim's wires use it."""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from laneway.sim.schema_fill import fill, json_text, output_schema
from laneway.sim.text import Prompt, ToolSpec, answer


class Color(StrEnum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    street: str
    zip_code: str = Field(min_length=5, max_length=5)


class Person(BaseModel):
    name: str
    age: int = Field(ge=18, le=130)
    height: float = Field(gt=0)
    active: bool
    color: Color
    kind: Literal["admin", "user"]
    tags: list[str] = Field(min_length=2)
    address: Address
    previous: list[Address]
    nickname: str | None
    born: datetime
    note: str = "kept default"


class Tree(BaseModel):
    label: str
    children: list[Tree]


@pytest.mark.parametrize("model", [Person, Address, Tree])
def test_a_pydantic_models_schema_is_filled_with_what_it_accepts(model: type[BaseModel]) -> None:
    value = fill(model.model_json_schema())
    model.model_validate(value)  # raises if it does not fit


def test_what_the_values_are() -> None:
    value = fill(Person.model_json_schema())
    assert value["age"] == 18
    assert value["color"] == "red"
    assert value["kind"] == "admin"
    assert len(value["tags"]) == 2
    assert value["nickname"] == "sim"  # an Optional is filled, as a model fills it
    assert "note" not in value  # not required: left to its default
    assert len(value["address"]["zip_code"]) == 5


def test_strict_schemas_fill_every_property_and_odd_schemas_do_not_break_it() -> None:
    strict = {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False}
    assert fill(strict) == {"a": 1}
    assert fill({}) == {}
    assert fill("nope") == {}
    assert fill({"type": ["null", "number"], "exclusiveMinimum": 0}) == 1
    assert fill({"const": 3}) == 3
    assert fill({"allOf": [{"$ref": "#/$defs/A"}], "$defs": {"A": strict}}) == {"a": 1}
    assert fill({"anyOf": [{"type": "null"}, {"type": "boolean"}]}) is True
    assert fill({"type": "array"}) == []


def test_a_json_answer_is_spaced_text_and_tools_get_faithful_arguments() -> None:
    assert json.loads(json_text(Address.model_json_schema())) == {"street": "sim", "zip_code": "simsi"}
    prompt = Prompt(output_schema=Address.model_json_schema())
    got = answer("m", prompt)
    assert len(got.tokens) > 1  # streams come in pieces
    Address.model_validate_json(got.text)
    tool = Prompt(tools=[ToolSpec("person", Person.model_json_schema())], tool_choice="person")
    called = answer("m", tool).tool_call
    assert called is not None
    Person.model_validate(called.arguments)


@pytest.mark.parametrize(
    ("kind", "schema", "want"),
    [
        ("json_object", None, {}),
        ("json", None, {}),
        ("json_schema", {"type": "object"}, {"type": "object"}),
        ("schema", {"type": "array"}, {"type": "array"}),
        ("text", None, None),
        (None, None, None),
    ],
)
def test_output_schema(kind: Any, schema: Any, want: Any) -> None:
    assert output_schema(kind, schema) == want
