"""Response bodies of the OpenAI-compatible API: what `/v1` answers whole (`response_model`) or as stream
chunks (`data:` lines, see serving.py and streams.py). Fields follow OpenAI's API reference. A chunk's
`usage` is left out unless the request asked for `stream_options.include_usage`. The requests are in
schemas.py.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from service.schemas import Usage


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


FinishReason = Literal["stop", "length", "tool_calls"]

ChoiceT = TypeVar("ChoiceT", bound=BaseModel)


class _Envelope(BaseModel, Generic[ChoiceT]):
    """What every `/v1` completion answer and stream chunk says around its choices, in OpenAI's order.
    Each model gives `object` its literal (a redeclared field keeps its place here, so bodies and
    schemas list the fields in this order); `_Response` and `_Chunk` add `usage` last."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChoiceT]


class _Response(_Envelope[ChoiceT], Generic[ChoiceT]):
    """A whole answer: `usage` always there."""

    usage: Usage


class _Chunk(_Envelope[ChoiceT], Generic[ChoiceT]):
    """A stream chunk: `usage` is `null`, or left out (streams.py's StreamUsage decides)."""

    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None


class CompletionResponse(_Response[CompletionChoice]):
    object: Literal["text_completion"] = "text_completion"


class CompletionChunk(_Chunk[CompletionChoice]):
    """One `data:` line of a `/v1/completions` stream (a choice's new text, or its `finish_reason`)."""

    object: Literal["text_completion"] = "text_completion"


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


# The chosen token, and the likeliest ones at its step (no docstring: the schema has no description).
class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


def _unset(value: Any) -> bool:
    return value is None


class FunctionCallOut(BaseModel):
    name: str
    arguments: str = Field(description="The arguments as JSON text (valid under the tool's `parameters` once whole).")


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallOut] | None = Field(default=None, exclude_if=_unset)


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionResponse(_Response[ChatChoice]):
    object: Literal["chat.completion"] = "chat.completion"


class FunctionDelta(BaseModel):
    name: str | None = Field(default=None, exclude_if=_unset)
    arguments: str | None = Field(default=None, exclude_if=_unset)


class ToolCallDelta(BaseModel):
    """A piece of a streamed call, as OpenAI streams them: `id`, `type` and `function.name` in its first
    chunk, then `function.arguments` pieces; `index` says which call of the message it belongs to."""

    index: int
    id: str | None = Field(default=None, exclude_if=_unset)
    type: Literal["function"] | None = Field(default=None, exclude_if=_unset)
    function: FunctionDelta


class ChatDelta(BaseModel):
    """What a chat chunk adds to its choice's message; fields it does not add are left out, not `null`."""

    role: Literal["assistant"] | None = Field(default=None, exclude_if=_unset)
    content: str | None = Field(default=None, exclude_if=_unset)
    tool_calls: list[ToolCallDelta] | None = Field(default=None, exclude_if=_unset)


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(_Chunk[ChatChunkChoice]):
    """One `data:` line of a `/v1/chat/completions` stream."""

    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"


class StreamErrorDetail(BaseModel):
    message: str
    type: str = "server_error"
    param: str | None = None
    code: int = 500


class StreamError(BaseModel):
    """The `data:` line of a stream whose generation failed after it began (then `[DONE]`), as vLLM sends it."""

    error: StreamErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "genai-service"
    max_model_len: int | None = Field(default=None, description="Extension (as vLLM): the model's context length.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
