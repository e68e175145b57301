"""Reading a chat answer as tool calls, whole or streamed (the tools and `tool_choice`: tools.py).

  * A forced named call: the whole answer is the function's arguments (generated under its schema).
  * `required`: the answer is `{"name": "<tool>", "arguments": {...}}` (generated under the anyOf
    schema); the call's arguments are the text of its `arguments` value.
  * `auto`: the answer is a call when it is nothing but calls in the prompt's format, one or more
    `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks, or one such bare JSON object,
    each naming an offered tool with arguments its `parameters` schema accepts (checked by the tool's
    compiled grammar); anything else is content.

Streamed, a forced call's arguments go out as they are generated (`required`: once the name is known,
the wrapper's closing `}` held back); under `auto` an answer that begins as a call may (`{` or
`<tool_call>`) is held back until it ends, then sent as calls or as content. A call's `finish_reason` is
`tool_calls` (`length` when the arguments were cut short).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from service.language.engine import GenerationEngine
from service.language.grammar import CompiledGrammar, Constraint
from service.language.model import LanguageModel
from service.openai.responses import (
    ChatDelta,
    FinishReason,
    FunctionCallOut,
    FunctionDelta,
    ToolCallDelta,
    ToolCallOut,
)
from service.openai.tools import ToolUse, call_prefix

_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_CALL_OPENING = "<tool_call>"


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolReader:
    """A request's tools, their compiled `parameters` grammars, and the tokenizer that checks arguments."""

    use: ToolUse
    grammars: Mapping[str, CompiledGrammar]
    encode: Callable[[str], list[int]]

    def checked(self, name: str, arguments: dict[str, Any]) -> str | None:
        """The arguments as JSON text (keys in the schema's order, written as the grammar writes JSON) when
        the tool's schema accepts them, else None."""
        function, grammar = self.use.function(name), self.grammars.get(name)
        if function is None or grammar is None:
            return None
        order = list(function.arguments_schema().get("properties", {}))
        text = json.dumps({key: arguments[key] for key in order if key in arguments} | arguments, ensure_ascii=False)
        matcher = grammar.new_matcher()
        accepted = all(matcher.consume(token) for token in self.encode(text)) and matcher.accepting()
        return text if accepted else None

    def required_call(self, text: str) -> tuple[str, str] | None:
        """(name, arguments text) of a `required` answer, once its name is known (arguments maybe partial)."""
        for function in self.use.functions:
            prefix = call_prefix(function.name)
            if text.startswith(prefix):
                rest = text[len(prefix) :]
                return function.name, rest[:-1] if _is_json(text) else rest
        return None

    def auto_calls(self, text: str) -> list[tuple[str, str]] | None:
        """The calls an `auto` answer is, or None when it is content."""
        stripped = text.strip()
        blocks = _BLOCK.findall(stripped)
        if blocks and not _BLOCK.sub("", stripped).strip():
            candidates = [b.strip() for b in blocks]
        elif stripped.startswith("{"):
            candidates = [stripped]
        else:
            return None
        calls: list[tuple[str, str]] = []
        for candidate in candidates:
            try:
                call = json.loads(candidate)
            except ValueError:
                return None
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                return None
            arguments = call.get("arguments", call.get("parameters", {}))
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except ValueError:
                    return None
            checked = self.checked(call["name"], arguments) if isinstance(arguments, dict) else None
            if checked is None:
                return None
            calls.append((call["name"], checked))
        return calls

    def calls(self, text: str) -> list[tuple[str, str]] | None:
        """The (name, arguments) calls a whole answer is, or None: content."""
        if self.use.mode == "named":
            return [(self.use.name or "", text)]
        if self.use.mode == "required":
            call = self.required_call(text)
            return [call] if call is not None else None
        if self.use.mode == "auto":
            return self.auto_calls(text)
        return None

    def whole(self, text: str, reason: FinishReason) -> tuple[str | None, list[ToolCallOut] | None, FinishReason]:
        """A whole answer's (content, tool_calls, finish_reason)."""
        calls = self.calls(text)
        if calls is None:
            return text, None, reason
        out = [ToolCallOut(id=call_id(), function=FunctionCallOut(name=n, arguments=a)) for n, a in calls]
        return None, out, called(reason)


def called(reason: FinishReason) -> FinishReason:
    """A call's finish reason: `tool_calls`, unless the answer was cut short."""
    return "length" if reason == "length" else "tool_calls"


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _header(index: int, name: str, arguments: str) -> ToolCallDelta:
    return ToolCallDelta(
        index=index, id=call_id(), type="function", function=FunctionDelta(name=name, arguments=arguments)
    )


@dataclass
class ToolCallStream:
    """One streamed choice's text as OpenAI's deltas: `add` each piece (None: nothing to send yet), then
    `finish` for the last delta and the finish reason."""

    reader: ToolReader
    text: str = ""
    name: str | None = None  # the call's, once known
    sent: int = 0  # arguments characters sent
    opened: bool = False  # the call's first delta (id, type, name) went out
    content: bool = False  # decided: this answer is content, streamed as it comes

    def _arguments(self) -> str | None:
        if self.reader.use.mode == "named":
            self.name = self.name or self.reader.use.name
            return self.text
        call = self.reader.required_call(self.text)
        if call is None:
            return None
        self.name = call[0]
        rest = self.text[len(call_prefix(call[0])) :]
        return rest[:-1]  # the wrapper's `}` (or the arguments' own last character, sent at the end)

    def _piece(self, arguments: str) -> ChatDelta | None:
        piece = arguments[self.sent :]
        self.sent = len(arguments)
        if not self.opened:
            self.opened = True
            return ChatDelta(tool_calls=[_header(0, self.name or "", piece)])
        if not piece:
            return None
        return ChatDelta(tool_calls=[ToolCallDelta(index=0, function=FunctionDelta(arguments=piece))])

    def add(self, piece: str) -> ChatDelta | None:
        self.text += piece
        if self.content:
            return ChatDelta(content=piece)
        if self.reader.use.forced:
            arguments = self._arguments()
            return self._piece(arguments) if arguments is not None else None
        opening = self.text.lstrip()
        if self.reader.use.mode == "auto" and (
            opening.startswith(("{", _CALL_OPENING)) or _CALL_OPENING.startswith(opening)
        ):
            return None  # may be a call: held until the end
        self.content = True
        return ChatDelta(content=self.text)

    def finish(self, reason: FinishReason) -> tuple[ChatDelta | None, FinishReason]:
        if self.content:
            return None, reason
        calls = self.reader.calls(self.text)
        if calls is None:
            return (ChatDelta(content=self.text) if self.text else None), reason
        if self.reader.use.forced:
            name, arguments = calls[0]
            self.name = name
            return self._piece(arguments), called(reason)
        headers = [_header(i, n, a) for i, (n, a) in enumerate(calls)]
        return ChatDelta(tool_calls=headers), called(reason)


async def tool_reader(engine: GenerationEngine, lm: LanguageModel, use: ToolUse) -> ToolReader | None:
    """The request's reader (None without tools), each tool's `parameters` compiled on the grammar thread:
    a schema the library cannot use is a 400 naming `tools.<i>.function.parameters`."""
    if not use.functions:
        return None
    grammars = {
        f.name: await engine.grammars.compile(
            Constraint.json_schema(f.arguments_schema(), f"tools.{i}.function.parameters")
        )
        for i, f in enumerate(use.functions)
    }
    return ToolReader(use, grammars, lambda text: lm.encode(text, parse_special=False))
