"""Chat messages of `/v1/chat/completions` and how they reach the model's chat template, tool calls included.

SmolLM2's chat template (like many small models') has no tools section: it renders `role` and `content`
only. So tools, the assistant's earlier calls and the tools' results are rendered in a default format,
Hermes' (the one Qwen's and NousResearch's templates use), inside the message contents the template
already places:

  * the offered tools go into the system message (appended to the client's own, or as the first message):
    their definitions one JSON object a line between `<tools>` and `</tools>`, and how to call one;
  * an assistant message's `tool_calls` become `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
    lines after its content;
  * a `tool` message (a tool's result) becomes a user turn `<tool_response>...</tool_response>`.

A model whose template has a tools section (Qwen's, Hermes', Llama 3.1's: it writes the definitions it is
given as `tools`) gets them its own way instead: the definitions as `tools`, an assistant message's calls
as its `tool_calls` (arguments as an object) and a tool's result as a `tool` message with its
`tool_call_id`, as transformers' chat templates take them (`template_messages` with `native_tools`). The
answer is read the same way either way (tool_calls.py): the `<tool_call>` blocks such templates ask for.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, model_validator

from service.schemas import RequestModel


class TextPart(RequestModel):
    type: Literal["text"]
    text: str


class CalledFunction(RequestModel):
    name: str = Field(description="The function the assistant called.")
    arguments: str = Field(description="Its arguments, as JSON text (as OpenAI returns them).")


class ToolCallIn(RequestModel):
    """A call an earlier assistant message made (sent back with the conversation)."""

    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessageIn(RequestModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = Field(default=None, description="Accepted and ignored.")
    tool_calls: list[ToolCallIn] | None = Field(
        default=None, description="An assistant message's calls (its `content` may then be null)."
    )
    tool_call_id: str | None = Field(default=None, description="A `tool` message's: the call it answers.")
    refusal: str | None = Field(default=None, description="Accepted and ignored (an assistant message sent back).")

    @model_validator(mode="before")
    @classmethod
    def _null_means_absent(cls, data: Any) -> Any:
        """An answer's message sent back as it came (`"refusal": null`, say): null fields count as absent."""
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data

    @model_validator(mode="after")
    def _check(self) -> ChatMessageIn:
        if self.role == "function":
            raise ValueError("role `function` (OpenAI's deprecated one) is not supported: send role `tool`")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message carries `tool_calls`")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a `tool` message needs the `tool_call_id` of the call it answers")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required")
        if isinstance(self.content, list):
            for part in self.content:
                if part.get("type") != "text":
                    raise ValueError(f"content parts of type `{part.get('type')}` are not supported (text only)")
                TextPart.model_validate(part)
        return self

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(str(part["text"]) for part in self.content or [])

    def template_role(self) -> Literal["system", "user", "assistant"]:
        """The role the chat template knows (`developer` is OpenAI's newer `system`; a tool's result is
        rendered as a user turn)."""
        if self.role in ("system", "developer"):
            return "system"
        return "assistant" if self.role == "assistant" else "user"

    def template_content(self) -> str:
        """The content the template places, tool calls and results in the default format above."""
        if self.role == "tool":
            return f"<tool_response>\n{self.text()}\n</tool_response>"
        calls = [_call_text(call) for call in self.tool_calls or []]
        return "\n".join(([self.text()] if self.text() else []) + calls)


def _call_text(call: ToolCallIn) -> str:
    body = json.dumps({"name": call.function.name, "arguments": _arguments(call)}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def _native_message(message: ChatMessageIn) -> dict[str, Any]:
    """A message as a template with a tools section takes it (transformers' convention)."""
    if message.role == "tool":
        return {"role": "tool", "content": message.text(), "tool_call_id": message.tool_call_id}
    native: dict[str, Any] = {"role": message.template_role(), "content": message.text()}
    if message.tool_calls:
        native["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": _arguments(call)}}
            for call in message.tool_calls
        ]
    return native


def _arguments(call: ToolCallIn) -> Any:
    try:
        return json.loads(call.function.arguments)
    except ValueError:
        return call.function.arguments  # shown as the client sent it


def template_messages(
    messages: list[ChatMessageIn], tools_prompt: str | None, *, native_tools: bool = False
) -> list[dict[str, Any]]:
    """The messages as the chat template takes them: `role` and `content`, the tools' system prompt (if any)
    appended to the first system message or put before the conversation; or, for a template with a tools
    section (`native_tools`), with their calls and results in its own fields and no tools prompt."""
    if native_tools:
        return [_native_message(m) for m in messages]
    rendered: list[dict[str, Any]] = [{"role": m.template_role(), "content": m.template_content()} for m in messages]
    if tools_prompt is None:
        return rendered
    if rendered and rendered[0]["role"] == "system":
        first = rendered[0]["content"]
        return [{"role": "system", "content": f"{first}\n\n{tools_prompt}" if first else tools_prompt}, *rendered[1:]]
    return [{"role": "system", "content": tools_prompt}, *rendered]
