"""Request bodies of the OpenAI-compatible API (`/v1/completions`, `/v1/chat/completions`); the responses
and stream chunks are in responses.py.

Fields follow OpenAI's API reference. Each request turns itself into engine parameters
(`to_sampling_params`), with OpenAI's defaults, checked by the native limits under OpenAI's field names. Fields this service cannot honour are refused with a 400 that
names them (never silently ignored), except `user`, which only labels a request. Unknown fields are
refused too. `presence_penalty`, `frequency_penalty` and `logit_bias` are OpenAI's, with OpenAI's
bounds (the native routes share them). `response_format` (`json_object`, `json_schema`) constrains the
output on both endpoints (structured.py); on chat, `tools` and `tool_choice` ask for tool calls (tools.py,
tool_calls.py) and the messages may carry them (messages.py). `top_k`, `min_p`, `repetition_penalty`, `ignore_eos`,
`guided_json`, `guided_regex`, `guided_choice` and, on chat, `add_generation_prompt` /
`continue_final_message` are extensions (vLLM's names), sent with the `openai` client through `extra_body`.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from service.language.sampling import SamplingParams
from service.language.validation import FieldNames, SamplingLimits, logit_bias_entries
from service.openai.messages import ChatMessageIn
from service.openai.structured import JSON_SCHEMA_EXAMPLE, ResponseFormat, structured_constraint
from service.openai.tools import TOOL_EXAMPLE, ToolChoice, ToolDef, ToolUse
from service.schemas import (
    ChoiceConstraint,
    FrequencyPenalty,
    JsonSchemaConstraint,
    LogitBias,
    MinP,
    ParseSpecial,
    PresencePenalty,
    RegexConstraint,
    RepetitionPenalty,
    RequestModel,
    Seed,
    StopStrings,
    Temperature,
    TimeoutSeconds,
    TopK,
    TopP,
)

MAX_LOGPROBS = 20
MAX_CHOICES = 16
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


T = TypeVar("T")


def _refuse(value: T, allowed: tuple[Any, ...], reason: str) -> T:
    """Field validators below use this so that the error's `param` names the refused field."""
    if value is not None and value not in allowed:
        raise ValueError(f"not supported by this server ({reason})")
    return value


class StreamOptions(RequestModel):
    include_usage: bool = Field(
        default=False,
        description='As OpenAI: every chunk carries `"usage": null` and a last chunk with empty `choices` the usage of the whole request. Without it no chunk has `usage`.',
    )
    continuous_usage_stats: bool = Field(
        default=False,
        description="Extension, as vLLM: with `include_usage`, every chunk carries the usage so far instead of `null` (no effect without `include_usage`).",
    )


class _SamplingFields(RequestModel):
    """What completions and chat share."""

    model: str | None = Field(
        default=None, description="The served model's id (see `GET /v1/models`); empty = that model."
    )
    temperature: Temperature | None = Field(
        default=None, description="0 = greedy; default 1 (sampling), as OpenAI. 0 to 100 (OpenAI itself stops at 2)."
    )
    top_p: TopP | None = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES, description=f"Choices per prompt (at most {MAX_CHOICES} in all).")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StopStrings = None
    seed: Seed | None = Field(
        default=None, description="Same seed + same request = same text (choice i uses seed + i)."
    )
    presence_penalty: PresencePenalty | None = None
    frequency_penalty: FrequencyPenalty | None = None
    logit_bias: LogitBias | None = None
    user: str | None = Field(default=None, description="Accepted and ignored.")
    response_format: ResponseFormat | None = Field(
        default=None,
        description='Structured output: `{"type": "json_object"}` (any JSON object) or `{"type": "json_schema", '
        '"json_schema": {"name": ..., "schema": {...}}}` (valid under the schema); `{"type": "text"}` = none.',
    )
    # extensions, as vLLM names them
    top_k: TopK = 0
    min_p: MinP = 0.0
    repetition_penalty: RepetitionPenalty = 1.0
    ignore_eos: bool = Field(default=False, description="Extension: keep generating past the end-of-sequence token.")
    timeout_s: TimeoutSeconds | None = None
    guided_json: JsonSchemaConstraint | str | None = Field(
        default=None, description="Extension (vLLM's): a JSON Schema (an object, or its JSON text) the output keeps."
    )
    guided_regex: RegexConstraint | None = Field(
        default=None, description="Extension (vLLM's): a regular expression the whole output matches."
    )
    guided_choice: ChoiceConstraint | None = Field(
        default=None, description="Extension (vLLM's): the output is exactly one of these strings."
    )

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        """Some clients send every field, unset ones as `null`: treat those as absent, as OpenAI does."""
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data

    def _sampling_params(
        self,
        limits: SamplingLimits,
        *,
        max_tokens: int | None,
        default_max_tokens: int,
        top_alternatives: int,
        names: FieldNames,
        forced_call: dict[str, Any] | None = None,
    ) -> SamplingParams:
        """OpenAI's defaults (temperature 1 samples; no `max_tokens` = the default, fitted into the context)."""
        temperature = 1.0 if self.temperature is None else self.temperature
        params = SamplingParams(
            max_new_tokens=limits.fit(default_max_tokens) if max_tokens is None else max_tokens,
            do_sample=temperature > 0,
            temperature=temperature,
            top_k=self.top_k,
            top_p=1.0 if self.top_p is None else self.top_p,
            repetition_penalty=self.repetition_penalty,
            min_p=self.min_p,
            logit_bias=logit_bias_entries(self.logit_bias),
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            seed=self.seed,
            stop=tuple(self.stop or ()),
            ignore_eos=self.ignore_eos,
            top_alternatives=top_alternatives,
            timeout_s=self.timeout_s,
            constraint=structured_constraint(
                self.response_format,
                self.guided_json,
                self.guided_regex,
                self.guided_choice,
                limits.max_text_chars,
                forced_call,
            ),
        )
        return limits.check(params, names)


class CompletionRequest(_SamplingFields):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "SmolLM2-135M-Instruct",
                    "prompt": "The capital of France is",
                    "max_tokens": 8,
                    "temperature": 0,
                },
                {"prompt": "The capital of France is", "max_tokens": 3, "temperature": 0, "logprobs": 3},
                {"prompt": "Once upon a time", "max_tokens": 20, "temperature": 0.8, "seed": 42, "stream": True},
                {
                    "prompt": "The capital of France is",
                    "max_tokens": 8,
                    "seed": 1,
                    "logit_bias": {"7042": -100},
                    "presence_penalty": 0.5,
                    "frequency_penalty": 0.5,
                    "min_p": 0.05,
                },
            ]
        },
    )

    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="Text, a list of texts, token ids, or a list of token-id lists."
    )
    max_tokens: int | None = Field(
        default=None, ge=0, description="Default 16 (as OpenAI). 0 only with `echo` (score the prompt)."
    )
    logprobs: int | None = Field(
        default=None,
        ge=0,
        le=MAX_LOGPROBS,
        description=f"Return each token's logprob and the top `logprobs` alternatives (0..{MAX_LOGPROBS}).",
    )
    echo: bool = Field(
        default=False, description="Prepend the prompt to the text (with `logprobs`: the prompt tokens' logprobs too)."
    )
    best_of: int | None = Field(default=None, description="Refused unless 1 or equal to `n`.")
    suffix: str | None = Field(default=None, description="Refused (no insertion mode).")
    parse_special: ParseSpecial = True

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if isinstance(value, (str, list)) and len(value) == 0:
            raise ValueError("prompt must not be empty")
        if isinstance(value, list) and any(isinstance(p, (str, list)) and len(p) == 0 for p in value):
            raise ValueError("no prompt in the list may be empty")
        return value

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, value: int | None, info: ValidationInfo) -> int | None:
        return _refuse(value, (1, info.data.get("n", 1)), "only 1 or equal to `n`")

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        return _refuse(value, (), "no insertion mode")

    @model_validator(mode="after")
    def _zero_tokens(self) -> CompletionRequest:
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens = 0 is only meaningful with `echo: true` (to score the prompt)")
        return self

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: a text or a list of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        ids = [x for x in p if isinstance(x, int)]
        if len(ids) == len(p):
            return [ids]
        return [x if isinstance(x, str) else list(x) for x in p if not isinstance(x, int)]

    def to_sampling_params(self, limits: SamplingLimits) -> SamplingParams:
        """One prompt's parameters (`max_tokens` = 0 with `echo`: nothing to generate, `max_new_tokens` 0)."""
        return self._sampling_params(
            limits,
            max_tokens=self.max_tokens,
            default_max_tokens=COMPLETIONS_DEFAULT_MAX_TOKENS,
            top_alternatives=self.logprobs or 0,
            names={"max_new_tokens": "max_tokens", "top_alternatives": "logprobs"},
        )


class ChatCompletionRequest(_SamplingFields):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "SmolLM2-135M-Instruct",
                    "messages": [{"role": "user", "content": "What is the capital of France?"}],
                    "max_tokens": 16,
                    "temperature": 0,
                },
                {
                    "messages": [{"role": "user", "content": "Say hi"}],
                    "max_tokens": 4,
                    "temperature": 0,
                    "logprobs": True,
                    "top_logprobs": 2,
                },
                {
                    "messages": [
                        {"role": "user", "content": "What is the capital of France?"},
                        {"role": "assistant", "content": "The capital of France is"},
                    ],
                    "max_tokens": 4,
                    "temperature": 0,
                    "continue_final_message": True,
                },
                {"messages": [{"role": "user", "content": "Name a capital."}], "response_format": JSON_SCHEMA_EXAMPLE},
                {
                    "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
                    "tools": [TOOL_EXAMPLE],
                    "tool_choice": "required",
                },
            ]
        },
    )

    messages: list[ChatMessageIn] = Field(
        min_length=1, description="Rendered with the model's chat template; text content only."
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description="Default GENAI_DEFAULT_MAX_NEW_TOKENS (capped by the context)."
    )
    max_completion_tokens: int | None = Field(default=None, ge=1, description="OpenAI's newer name for `max_tokens`.")
    logprobs: bool = Field(default=False, description="Return each generated token's logprob.")
    top_logprobs: int | None = Field(
        default=None,
        ge=0,
        le=MAX_LOGPROBS,
        description=f"With `logprobs`, the top alternatives per token (0..{MAX_LOGPROBS}).",
    )
    tools: list[ToolDef] | None = Field(
        default=None, description="Functions the model may call (shown in its prompt; see `tool_choice`)."
    )
    tool_choice: ToolChoice | None = Field(
        default=None,
        description='`"none"` (the default without tools), `"auto"` (the default with them: the model decides), '
        '`"required"` (a call to one of the tools, its arguments under its schema), or '
        '`{"type": "function", "function": {"name": ...}}` (a call to that one).',
    )
    functions: list[Any] | None = Field(default=None, description="Refused (no tool calling).")
    function_call: Any = Field(default=None, description="Only `none`.")
    parallel_tool_calls: bool | None = Field(
        default=None, description="Accepted: a forced call is one call; `auto` may answer several."
    )
    # extensions, as vLLM names them
    add_generation_prompt: bool | None = Field(
        default=None,
        description="Extension: end the prompt with the template's opening of an assistant turn (default true; "
        "false with `continue_final_message`).",
    )
    continue_final_message: bool = Field(
        default=False,
        description="Extension: the last message (an assistant's prefill, say) is left open and continued, not "
        "answered: its content is the start of the reply, which the answer goes on from. Not with "
        "`add_generation_prompt: true`.",
    )

    @field_validator("functions")
    @classmethod
    def _no_functions(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("not supported by this server (OpenAI's deprecated form: send `tools`)")
        return value

    @field_validator("function_call")
    @classmethod
    def _no_function_call(cls, value: Any) -> Any:
        return _refuse(value, ("none",), "OpenAI's deprecated form: send `tool_choice`")

    def tool_use(self) -> ToolUse:
        """The tools and what `tool_choice` makes of them (InvalidRequest naming the field that is wrong)."""
        return ToolUse.of(self.tools, self.tool_choice)

    @field_validator("continue_final_message")
    @classmethod
    def _continue_or_answer(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("add_generation_prompt") is True:
            raise ValueError(
                "cannot continue the final message and also open a new assistant turn: "
                "send `add_generation_prompt: false` (or leave it out) with `continue_final_message: true`"
            )
        return value

    def opens_assistant_turn(self) -> bool:
        """Whether the prompt ends with the template's generation prompt (an assistant turn's opening)."""
        if self.add_generation_prompt is None:
            return not self.continue_final_message
        return self.add_generation_prompt

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("needs `logprobs: true`")
        return value

    @model_validator(mode="after")
    def _one_max_tokens(self) -> ChatCompletionRequest:
        if (
            self.max_tokens is not None
            and self.max_completion_tokens is not None
            and self.max_tokens != self.max_completion_tokens
        ):
            raise ValueError("give `max_tokens` or `max_completion_tokens`, not two different values")
        return self

    def to_sampling_params(self, limits: SamplingLimits) -> SamplingParams:
        """Without `max_tokens`: GENAI_DEFAULT_MAX_NEW_TOKENS, capped by what the context leaves."""
        only_new_name = self.max_tokens is None and self.max_completion_tokens is not None
        return self._sampling_params(
            limits,
            max_tokens=self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens,
            default_max_tokens=limits.default_max_new_tokens,
            top_alternatives=(self.top_logprobs or 0) if self.logprobs else 0,
            names={
                "max_new_tokens": "max_completion_tokens" if only_new_name else "max_tokens",
                "top_alternatives": "top_logprobs",
            },
            forced_call=self.tool_use().forced_schema(),
        )
