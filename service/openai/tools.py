"""Tools on `/v1/chat/completions`: OpenAI's `tools` and `tool_choice`, what the model is shown, and the
constraint a forced call is generated under.

`tool_choice`:
  * `"none"` (the default without tools): the tools are not shown to the model; the answer is content;
  * `"auto"` (the default with tools): the tools are shown (messages.py's default format) and the model
    decides; its answer is read as calls when it is nothing but calls in that format (tool_calls.py);
  * `"required"`: the answer is generated under the JSON schema `{"name": <one of the tools' names>,
    "arguments": <that tool's parameters>}` (an `anyOf` over the tools), so it is always a call;
  * `{"type": "function", "function": {"name": ...}}`: the answer is that function's arguments, generated
    under its `parameters` schema.

Each tool's `parameters` is compiled by the grammar library when the request comes (tool_calls.py's
`tool_reader`), so a schema it cannot use is a 400 naming `tools.<i>.function.parameters`. A forced call
is a constraint like `response_format`, so the two cannot be combined in one request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator

from service.language.exceptions import InvalidRequest
from service.schemas import RequestModel

NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
TOOL_EXAMPLE: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}


class FunctionDef(RequestModel):
    name: str = Field(
        pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The function's name (letters, digits, `_`, `-`; at most 64)."
    )
    description: str | None = Field(default=None, description="Shown to the model with the name and parameters.")
    parameters: dict[str, Any] | None = Field(
        default=None, description="JSON Schema of the arguments, an object (absent: no arguments)."
    )
    strict: bool | None = Field(default=None, description="Accepted: forced calls always keep the schema.")

    @field_validator("parameters")
    @classmethod
    def _an_object(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type", "object") != "object":
            raise ValueError("the arguments are a JSON object: the schema's `type` must be `object`")
        return value

    def arguments_schema(self) -> dict[str, Any]:
        return self.parameters if self.parameters is not None else NO_ARGUMENTS

    def shown(self) -> dict[str, Any]:
        """The definition as the model reads it."""
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = self.arguments_schema()
        return {"type": "function", "function": function}


class ToolDef(RequestModel):
    type: Literal["function"] = Field(description="Only functions.")
    function: FunctionDef


class FunctionName(RequestModel):
    name: str


class NamedToolChoice(RequestModel):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice

TOOLS_PROMPT = """You may call functions. Their definitions, one JSON object a line:
<tools>
{definitions}
</tools>
To call one, answer with only:
<tool_call>
{{"name": "<the function's name>", "arguments": <its arguments, a JSON object>}}
</tool_call>"""


def call_prefix(name: str) -> str:
    """How a `required` call's text begins (the grammar writes JSON as `json.dumps` does)."""
    return '{"name": ' + json.dumps(name) + ', "arguments": '


@dataclass(frozen=True)
class ToolUse:
    """A request's tools and what `tool_choice` makes of them: `mode` `none`, `auto`, `required` or
    `named` (then `name` is the function)."""

    functions: tuple[FunctionDef, ...]
    mode: Literal["none", "auto", "required", "named"]
    name: str | None = None

    @classmethod
    def of(cls, tools: list[ToolDef] | None, choice: ToolChoice | None) -> ToolUse:
        functions = tuple(tool.function for tool in tools or [])
        names = [f.name for f in functions]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise InvalidRequest(f"tools.{index}.function.name", f"two tools are named `{name}`")
        if choice is None:
            return cls(functions, "auto" if functions else "none")
        if isinstance(choice, NamedToolChoice):
            if choice.function.name not in names:
                raise InvalidRequest(
                    "tool_choice.function.name",
                    f"tool_choice names `{choice.function.name}`, which is not among `tools` ({', '.join(names) or 'none'})",
                )
            return cls(functions, "named", choice.function.name)
        if choice in ("auto", "required") and not functions:
            raise InvalidRequest("tool_choice", f'tool_choice "{choice}" needs `tools`')
        return cls(functions, choice)

    @property
    def forced(self) -> bool:
        return self.mode in ("required", "named")

    def function(self, name: str) -> FunctionDef | None:
        return next((f for f in self.functions if f.name == name), None)

    def definitions(self) -> list[dict[str, Any]] | None:
        """The definitions for a template with a tools section (None under `none`: not shown)."""
        if self.mode == "none" or not self.functions:
            return None
        return [f.shown() for f in self.functions]

    def prompt(self) -> str | None:
        """The system prompt that shows the tools (None under `none`)."""
        if self.mode == "none" or not self.functions:
            return None
        lines = "\n".join(json.dumps(f.shown(), ensure_ascii=False) for f in self.functions)
        return TOOLS_PROMPT.format(definitions=lines)

    def forced_schema(self) -> dict[str, Any] | None:
        """The JSON schema a forced call is generated under (None when the model decides)."""
        if self.mode == "named":
            function = self.function(self.name or "")
            assert function is not None
            return function.arguments_schema()
        if self.mode != "required":
            return None
        branches = [
            {
                "type": "object",
                "properties": {"name": {"const": f.name}, "arguments": f.arguments_schema()},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for f in self.functions
        ]
        return branches[0] if len(branches) == 1 else {"anyOf": branches}
