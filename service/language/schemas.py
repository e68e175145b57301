"""Request and response bodies of /next-token-probs and /generate (tokenize_schemas.py: /tokenize and
/detokenize; explain_schemas.py: the `explain` trace both of these answer with).

Static bounds here reject nonsense early. Each request turns itself into engine parameters
(`to_sampling_params`, `to_distribution_params`), checked against the configured limits (`GENAI_MAX_*`,
shown by `/info`) and the loaded model by `validation.SamplingLimits`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.language.explain_schemas import SamplerStage, StepExplanation, TokenCandidate, absent
from service.language.sampling import SamplingParams
from service.language.validation import DistributionParams, SamplingLimits, logit_bias_entries, one_constraint
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
    Usage,
)


class NextTokenRequest(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"prompt": "The capital of France is", "top_k": 5},
                {
                    "prompt": "The capital of France is",
                    "top_k": 5,
                    "explain": True,
                    "temperature": 0.7,
                    "sample_top_k": 50,
                    "top_p": 0.9,
                },
            ]
        }
    )

    prompt: str = Field(min_length=1, description="The text whose continuation is asked for.")
    top_k: int = Field(
        default=10, ge=1, description="How many candidates to return (at most GENAI_MAX_TOP_K, default 100)."
    )
    temperature: Temperature | None = Field(
        default=None,
        description="Divide the logits by this before the softmax (default 1: the model's own distribution; 0 to 100).",
    )
    add_special_tokens: bool = Field(
        default=False, description="Tokenize the prompt with the tokenizer's special tokens."
    )
    parse_special: ParseSpecial = True
    explain: bool = Field(
        default=False,
        description=(
            "Also return `stages`: the distribution after each step /generate's sampler would apply to this next "
            "token with these settings (`temperature`, `logit_bias`, `repetition_penalty` over the prompt's tokens, "
            "`frequency_penalty` and `presence_penalty` over the tokens generated so far, none for a first token, "
            "`min_p`, `sample_top_k`, `top_p`), each with its `top_k` likeliest tokens (then at most "
            "GENAI_MAX_TOP_ALTERNATIVES)."
        ),
    )
    sample_top_k: TopK = Field(
        default=0,
        description="With `explain`: /generate's `top_k` filter (0 = off), named apart because `top_k` here counts the candidates listed.",
    )
    top_p: TopP = Field(default=1.0, description="With `explain`: /generate's `top_p` filter (1 = off).")
    repetition_penalty: RepetitionPenalty = Field(
        default=1.0, description="With `explain`: /generate's repetition penalty over the prompt's tokens (1 = off)."
    )
    min_p: MinP = Field(default=0.0, description="With `explain`: /generate's `min_p` filter (0 = off).")
    logit_bias: LogitBias | None = Field(
        default=None, description="With `explain`: /generate's `logit_bias` (token id -> -100..100 added to its logit)."
    )
    presence_penalty: PresencePenalty = Field(
        default=0.0,
        description="With `explain`: /generate's presence penalty (-2..2). It counts generated tokens, of which a first "
        "token has none: its stage changes nothing here.",
    )
    frequency_penalty: FrequencyPenalty = Field(
        default=0.0,
        description="With `explain`: /generate's frequency penalty (-2..2). It counts generated tokens, of which a "
        "first token has none: its stage changes nothing here.",
    )

    def to_distribution_params(self, limits: SamplingLimits) -> DistributionParams:
        return limits.check_distribution(
            DistributionParams(
                top_k=self.top_k,
                temperature=1.0 if self.temperature is None else self.temperature,
                explain=self.explain,
                sample_top_k=self.sample_top_k,
                top_p=self.top_p,
                repetition_penalty=self.repetition_penalty,
                min_p=self.min_p,
                logit_bias=logit_bias_entries(self.logit_bias),
                presence_penalty=self.presence_penalty,
                frequency_penalty=self.frequency_penalty,
            )
        )


class NextTokenResponse(BaseModel):
    candidates: list[TokenCandidate] = Field(
        description="Most likely first. Probabilities come from softmax(logits / temperature) over the whole vocabulary, before any sampling filter."
    )
    prompt_tokens: int = Field(examples=[5])
    temperature: float = Field(examples=[1.0])
    model: str = Field(examples=["SmolLM2-135M-Instruct"])
    stages: list[SamplerStage] | None = Field(
        default=None,
        exclude_if=absent,
        description="With `explain`: the distribution after each sampler step, in order (`model` first), as /generate's sampler would shape this token.",
    )


class ChatMessage(RequestModel):
    role: Literal["system", "user", "assistant"]
    content: str


class GenerateRequest(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"prompt": "The capital of France is", "max_new_tokens": 8},
                {
                    "prompt": "Once upon a time",
                    "max_new_tokens": 20,
                    "do_sample": True,
                    "temperature": 0.8,
                    "top_p": 0.95,
                    "seed": 42,
                },
                {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_new_tokens": 30},
                {"prompt": "The capital of France is", "max_new_tokens": 3, "top_alternatives": 3},
                {
                    "prompt": "Once upon a time",
                    "max_new_tokens": 4,
                    "do_sample": True,
                    "temperature": 0.8,
                    "top_p": 0.9,
                    "seed": 7,
                    "explain": True,
                },
                {
                    "prompt": "The capital of France is",
                    "max_new_tokens": 8,
                    "do_sample": True,
                    "seed": 1,
                    "logit_bias": {"7042": -100},
                    "frequency_penalty": 0.5,
                    "presence_penalty": 0.5,
                    "min_p": 0.05,
                },
                {
                    "messages": [{"role": "user", "content": "Name a European capital and its country."}],
                    "max_new_tokens": 40,
                    "json_schema": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
                        "required": ["city", "country"],
                    },
                },
                {"prompt": "Is the sky blue? Answer:", "max_new_tokens": 4, "choice": [" yes", " no"]},
            ]
        },
    )

    prompt: str | None = Field(default=None, min_length=1, description="Raw text to continue. Give this or `messages`.")
    messages: list[ChatMessage] | None = Field(
        default=None, min_length=1, description="Chat form: rendered with the model's chat template."
    )
    max_new_tokens: int = Field(
        default=64, ge=1, description="Tokens to generate at most (at most GENAI_MAX_NEW_TOKENS, default 512)."
    )
    do_sample: bool = Field(default=False, description="false = greedy (always the most likely token); true = sample.")
    temperature: Temperature = 1.0
    top_k: TopK = 0
    top_p: TopP = 1.0
    repetition_penalty: RepetitionPenalty = 1.0
    min_p: MinP = 0.0
    logit_bias: LogitBias | None = None
    presence_penalty: PresencePenalty = 0.0
    frequency_penalty: FrequencyPenalty = 0.0
    seed: Seed | None = None
    stop: StopStrings = None
    json_schema: JsonSchemaConstraint | None = None
    regex: RegexConstraint | None = None
    choice: ChoiceConstraint | None = None
    ignore_eos: bool = Field(
        default=False, description="Keep generating past the end-of-sequence token (exact lengths for benchmarks)."
    )
    top_alternatives: int = Field(
        default=0,
        ge=0,
        description="Per step, also return the k most likely tokens with their probabilities (at most GENAI_MAX_TOP_ALTERNATIVES); with `explain`, also each stage's count (0 there means 5).",
    )
    explain: bool = Field(
        default=False,
        description=(
            "Show why each token was chosen: every step gets `explain` (the model's entropy, the token's surprisal, "
            "the margin of the two likeliest, the distribution after each sampler step, and the draw) and the answer "
            "(or the stream's `done` event) the `perplexity` of the generated tokens. Costs a full-vocabulary softmax "
            "and a few top-k per step and stage; off, nothing."
        ),
    )
    stream: bool = Field(default=False, description="Answer as Server-Sent Events, one event per token.")
    timeout_s: TimeoutSeconds | None = None
    add_special_tokens: bool = Field(
        default=False, description="Tokenize the prompt with the tokenizer's special tokens (ignored for messages)."
    )
    parse_special: ParseSpecial = True

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        return self

    def to_sampling_params(self, limits: SamplingLimits) -> SamplingParams:
        """The engine's parameters, if they keep the limits (the field names are the engine's own)."""
        return limits.check(
            SamplingParams(
                max_new_tokens=self.max_new_tokens,
                do_sample=self.do_sample and self.temperature > 0,
                temperature=self.temperature,
                top_k=self.top_k,
                top_p=self.top_p,
                repetition_penalty=self.repetition_penalty,
                min_p=self.min_p,
                logit_bias=logit_bias_entries(self.logit_bias),
                presence_penalty=self.presence_penalty,
                frequency_penalty=self.frequency_penalty,
                seed=self.seed,
                stop=tuple(self.stop or ()),
                ignore_eos=self.ignore_eos,
                top_alternatives=self.top_alternatives or (min(5, limits.max_top_alternatives) if self.explain else 0),
                timeout_s=self.timeout_s,
                explain=self.explain,
                constraint=one_constraint(
                    [
                        ("json_schema", "json_schema", self.json_schema),
                        ("regex", "regex", self.regex),
                        ("choice", "choice", self.choice),
                    ],
                    limits.max_text_chars,
                ),
            )
        )


class StepDetail(BaseModel):
    index: int
    id: int
    token: str
    probability: float
    logprob: float
    alternatives: list[TokenCandidate] | None = Field(
        default=None, description="The most likely tokens at this step (present when `top_alternatives` > 0)."
    )
    explain: StepExplanation | None = Field(
        default=None, exclude_if=absent, description="Why this token was chosen (present with `explain`)."
    )


class Timing(BaseModel):
    queue_seconds: float = Field(description="Waiting for a place in the batch.")
    time_to_first_token_seconds: float | None
    total_seconds: float
    tokens_per_second: float | None = Field(description="Decoding speed after the first token.")


class GenerateResponse(BaseModel):
    text: str = Field(examples=[" Paris.\n\nThe"])
    ids: list[int] = Field(
        description="Generated token ids (an end-of-sequence token included when it ended the text).",
        examples=[[7042, 30, 198, 198, 504]],
    )
    finish_reason: Literal["length", "stop", "eos", "time_limit", "cancelled"] = Field(examples=["length"])
    usage: Usage
    timing: Timing
    steps: list[StepDetail] | None = Field(
        default=None,
        description="Per generated token: its probability and the alternatives (when `top_alternatives` > 0 or `explain`).",
    )
    model: str = Field(examples=["SmolLM2-135M-Instruct"])
    perplexity: float | None = Field(
        default=None,
        exclude_if=absent,
        description="With `explain`: exp of the mean surprisal of the generated tokens under the model's distribution (1 = no surprise at all).",
        examples=[1.84],
    )
