"""What every protocol's schemas share: one base model for requests, one set of bounds for the sampling
fields, and the `Usage` every generating response reports.

`RequestModel` is strict (a JSON number for a number, a boolean for a boolean: `"4"`, `true` or `1.0`
for an integer are refused, naming the field), refuses unknown fields, and refuses any string that is
not valid Unicode text. JSON can spell a lone UTF-16 surrogate (`"\\ud800"`), which Python keeps as a
code point that cannot be encoded as UTF-8; the tokenizer and error messages would fail on it, so it
is a 4xx naming the field, at the schema, for every route alike.

The bounded field types are the only definition of each sampling field's range: the native routes and
`/v1` take the same `Temperature`, `TopP`, ... so a value accepted by one is accepted by the other, and
`/docs` shows the bounds.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator


def first_unencodable(value: Any) -> str | None:
    """Describe the first code point in `value` (a string, or strings nested in lists and dicts) that UTF-8
    cannot encode, or None when there is none. ASCII strings, nearly all of them, return at once."""
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"U+{ord(value[exc.start]):04X} at character {exc.start}"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = first_unencodable(key) or first_unencodable(item)
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for item in value:
            found = first_unencodable(item)
            if found:
                return found
    return None


class RequestModel(BaseModel):
    """Base of every request body: strict types, no unknown fields, only valid Unicode strings."""

    model_config = ConfigDict(strict=True, extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _valid_unicode_text(cls, value: Any) -> Any:
        """Strings and lists of strings, before pydantic reads them (its own message would not say why)."""
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(item, str) for item in value)):
            _refuse_unencodable(value)
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode_within(cls, value: Any) -> Any:
        """Strings inside free-form lists and maps (chat content parts, parameters); nested request models
        have checked their own fields already, so the error names the deepest field."""
        if isinstance(value, (list, dict, tuple)):
            _refuse_unencodable(value)
        return value


def _refuse_unencodable(value: Any) -> None:
    found = first_unencodable(value)
    if found is not None:
        raise ValueError(
            f"contains {found}, a lone surrogate, which is not valid Unicode text (it cannot be encoded as UTF-8)"
        )


def _stop_strings(value: str | list[str] | None) -> list[str] | None:
    """One string or a list of them, none empty; an empty list is no stop at all."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    if any(s == "" for s in items):
        raise ValueError("stop strings must not be empty")
    return items or None


# ---- the shared bounds ------------------------------------------------------------------------

Temperature = Annotated[
    float,
    Field(
        ge=0,
        le=100,
        allow_inf_nan=False,
        description="Divide the logits by this before the softmax; 0 = greedy. 0 to 100.",
    ),
]
TopP = Annotated[
    float,
    Field(
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="Nucleus sampling: the smallest set of tokens whose probability reaches top_p. (0, 1].",
    ),
]
TopK = Annotated[int, Field(ge=0, description="Sample only among the k most likely tokens (0 = no limit).")]
RepetitionPenalty = Annotated[
    float,
    Field(
        ge=0.1,
        le=10,
        allow_inf_nan=False,
        description="CTRL's penalty on tokens already in the prompt or output: > 1 discourages them, < 1 favours them. 0.1 to 10.",
    ),
]
MinP = Annotated[
    float,
    Field(
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Sample only among tokens at least min_p times as likely as the likeliest (after the temperature; "
        "0 = off). 0 to 1.",
    ),
]
PresencePenalty = Annotated[
    float,
    Field(
        ge=-2,
        le=2,
        allow_inf_nan=False,
        description="OpenAI's presence penalty: subtracted once from the logit of every token already generated "
        "(> 0 favours new tokens, < 0 repeats). -2 to 2; 0 = off.",
    ),
]
FrequencyPenalty = Annotated[
    float,
    Field(
        ge=-2,
        le=2,
        allow_inf_nan=False,
        description="OpenAI's frequency penalty: subtracted from each token's logit as many times as it was generated "
        "(> 0 discourages repeats, < 0 favours them). -2 to 2; 0 = off.",
    ),
]
LOGIT_BIAS_MAX = 100.0
MAX_LOGIT_BIAS_ENTRIES = 300
"""At most this many token ids in one request's `logit_bias` (a constant, not a setting)."""
LogitBiasValue = Annotated[float, Field(ge=-LOGIT_BIAS_MAX, le=LOGIT_BIAS_MAX, allow_inf_nan=False)]
LogitBias = Annotated[
    dict[str, LogitBiasValue],
    Field(
        description="OpenAI's logit bias: token id (as a string, the JSON object key) -> a number from -100 to 100 "
        "added to its logit before any other step (-100 all but bans the token, 100 all but forces it); at most "
        f"{MAX_LOGIT_BIAS_ENTRIES} ids, each in the vocabulary.",
        examples=[{"7042": -100}],
    ),
]
Seed = Annotated[int, Field(ge=0, le=2**63 - 1, description="Same seed + same request = same text.")]
TimeoutSeconds = Annotated[
    float,
    Field(
        ge=0.01,
        allow_inf_nan=False,
        description="This request's time limit in seconds, at least 0.01 and at most GENAI_REQUEST_TIMEOUT_S: past it the "
        "generation ends with finish_reason `time_limit`, or 504 if no token was produced yet.",
    ),
]
StopStrings = Annotated[
    str | list[str] | None,
    AfterValidator(_stop_strings),
    Field(description="Stop before any of these strings (at most GENAI_MAX_STOP_SEQUENCES, none empty)."),
]
ParseSpecial = Annotated[
    bool,
    Field(
        description="Raw text only: true (the default) turns the text of special tokens such as `<|im_end|>` into those "
        "tokens, as a raw prompt to the model means them; false encodes them as plain text. Chat `messages` never "
        "produce special tokens from their content."
    ),
]

MAX_CHOICES_CONSTRAINT = 1024
"""At most this many strings in one `choice` / `guided_choice` constraint."""
JsonSchemaConstraint = Annotated[
    dict[str, Any],
    Field(
        description="Structured output: the text is one JSON value valid under this JSON Schema (objects, arrays, enums, "
        "numbers and their bounds, `required`, `$ref`, `anyOf`, patterns, formats), written on one line as "
        '`json.dumps` writes it. `{"type": "object"}` is any JSON object. The generation stops when the value is '
        "complete (finish reason `stop`). A schema the grammar library cannot compile is refused naming this field.",
        examples=[{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}],
    ),
]
RegexConstraint = Annotated[
    str,
    Field(
        min_length=1,
        description="Structured output: the whole text matches this regular expression (Rust `regex` syntax, as "
        "llguidance reads it: no look-around, no backreferences); it may end once it matches, and stops when it can "
        "go no further.",
        examples=["[A-Z]{2}-[0-9]{4}"],
    ),
]
ChoiceConstraint = Annotated[
    list[str],
    Field(
        min_length=1,
        max_length=MAX_CHOICES_CONSTRAINT,
        description=f"Structured output: the text is exactly one of these strings (at most {MAX_CHOICES_CONSTRAINT}).",
        examples=[["positive", "negative", "neutral"]],
    ),
]


# ---- shared by responses ----------------------------------------------------------------------


class Usage(BaseModel):
    """Tokens a request used, as OpenAI counts them (the native `/generate` reports the same object)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
