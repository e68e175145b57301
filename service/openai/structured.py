"""Structured output under `/v1`: OpenAI's `response_format` and vLLM's `guided_json`, `guided_regex` and
`guided_choice` extensions, as the one engine constraint they ask for (service/language/grammar.py).

`{"type": "json_object"}` is any JSON object; `{"type": "json_schema", "json_schema": {"name", "schema"}}`
a value valid under the schema (`strict` is accepted: the output always keeps the schema). At most one
of the four fields may constrain a request; a refusal names the field as the client sent it
(`response_format.json_schema.schema`, `guided_regex`, …).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from service.language.exceptions import InvalidRequest
from service.language.grammar import Constraint, ConstraintKind
from service.language.validation import one_constraint
from service.schemas import RequestModel

_ANY_OBJECT: dict[str, Any] = {"type": "object"}
JSON_SCHEMA_EXAMPLE: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "capital",
        "schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
            "required": ["city", "country"],
        },
    },
}


class JsonSchemaFormat(RequestModel):
    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="The schema's name, as OpenAI asks for one (letters, digits, `_` and `-`; at most 64).",
    )
    description: str | None = Field(default=None, description="Accepted; not shown to the model.")
    schema_: dict[str, Any] | None = Field(
        default=None,
        alias="schema",
        description="The JSON Schema the answer keeps (absent: any JSON object).",
    )
    strict: bool | None = Field(default=None, description="Accepted: the answer always keeps the schema.")


class ResponseFormat(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"type": "json_object"}, JSON_SCHEMA_EXAMPLE]})

    type: Literal["text", "json_object", "json_schema"] = Field(
        description="`text`: no constraint; `json_object`: any JSON object; `json_schema`: valid under `json_schema.schema`."
    )
    json_schema: JsonSchemaFormat | None = Field(default=None, description="With `type: json_schema` only.")

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("`json_schema` goes with `type: json_schema`, and that type needs it")
        return self

    def candidate(self) -> tuple[str, ConstraintKind, object]:
        """(field, kind, value) for `one_constraint`: None as the value when it constrains nothing."""
        if self.type == "json_object":
            return ("response_format", "json_schema", _ANY_OBJECT)
        if self.json_schema is not None:
            if self.json_schema.schema_ is None:
                return ("response_format.json_schema", "json_schema", _ANY_OBJECT)
            return ("response_format.json_schema.schema", "json_schema", self.json_schema.schema_)
        return ("response_format", "json_schema", None)


def structured_constraint(
    response_format: ResponseFormat | None,
    guided_json: dict[str, Any] | str | None,
    guided_regex: str | None,
    guided_choice: list[str] | None,
    max_text_chars: int,
    forced_call: dict[str, Any] | None = None,
) -> Constraint | None:
    """The constraint the request's structured-output fields ask for, if any (at most one may); a forced tool
    call's schema (`tool_choice`, tools.py) is one too."""
    if isinstance(guided_json, str):
        try:
            guided_json = json.loads(guided_json)
        except ValueError as exc:
            raise InvalidRequest("guided_json", f"guided_json is not JSON: {exc}") from exc
        if not isinstance(guided_json, dict):
            raise InvalidRequest("guided_json", "guided_json must be a JSON Schema object")
    return one_constraint(
        [
            response_format.candidate() if response_format is not None else ("response_format", "json_schema", None),
            ("guided_json", "json_schema", guided_json),
            ("guided_regex", "regex", guided_regex),
            ("guided_choice", "choice", guided_choice),
            ("tool_choice", "json_schema", forced_call),
        ],
        max_text_chars,
    )
