"""Request and response bodies of the language endpoints (/tokenize, /detokenize, /next-token-probs, /generate).

Static bounds here reject nonsense early. Each request turns itself into engine parameters
(`to_sampling_params`, `to_distribution_params`), checked against the configured limits (`GENAI_MAX_*`,
shown by `/info`) and the loaded model by `validation.SamplingLimits`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.language.bpe_explain import BpeExplanation
from service.language.sampling import SamplingParams, StageName
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


class TokenizeRequest(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"text": "Hello, world!"}, {"text": "Hello, world!", "explain": True}]}
    )

    text: str = Field(description="Text to split into tokens (at most GENAI_MAX_TEXT_CHARS characters).")
    add_special_tokens: bool = Field(
        default=False,
        description="Add the tokenizer's special tokens (BOS and the like), as the model would see a prompt.",
    )
    parse_special: ParseSpecial = True
    explain: bool = Field(
        default=False,
        description=(
            "Also show how the text became these tokens: the pieces the tokenizer cuts it into, and for each the "
            "byte-pair merges applied, in order. Byte-pair-encoding (BPE) tokenizers only (SmolLM2's, GPT-2's, "
            "Llama 3's); others are refused with a 422 naming `explain`."
        ),
    )


class BpeMerge(BaseModel):
    rank: int = Field(
        description="The merge's place in the tokenizer's merge list: the lowest-ranked pair of neighbours is merged first.",
        examples=[653],
    )
    left: str = Field(examples=["Ġwor"])
    right: str = Field(examples=["ld"])
    merged: str = Field(description="The new symbol, a vocabulary entry.", examples=["Ġworld"])
    symbols: list[str] = Field(description="The piece's symbols after this merge.", examples=[["Ġworld"]])


class TokenizePiece(BaseModel):
    text: str = Field(
        description="The piece as it stands in `normalized` (empty for a token the tokenizer adds around the text).",
        examples=[" world"],
    )
    start: int = Field(description="[start, end) character span of the piece in `normalized`.", examples=[6])
    end: int = Field(examples=[12])
    special: bool = Field(
        description="An added token (`<|im_end|>` and the like, with `parse_special`) or one added around the text (`add_special_tokens`): taken whole, no merges.",
        examples=[False],
    )
    byte_level: str = Field(
        description="The piece as the BPE sees it: for byte-level BPE each byte is one printable character (a space is `Ġ`, `é` is `Ã©`).",
        examples=["Ġworld"],
    )
    utf8: list[int] = Field(description="The piece's UTF-8 bytes.", examples=[[32, 119, 111, 114, 108, 100]])
    initial: list[str] = Field(
        description="The symbols before any merge (one per byte-level character).",
        examples=[["Ġ", "w", "o", "r", "l", "d"]],
    )
    merges: list[BpeMerge] = Field(description="Each merge applied, in order.")
    whole_word: bool = Field(
        description="The piece was in the vocabulary as a whole, so merges were skipped (tokenizers with `ignore_merges`).",
        examples=[False],
    )
    tokens: list[str] = Field(
        description="The vocabulary entries the piece ends as (in the byte-level spelling).", examples=[["Ġworld"]]
    )
    ids: list[int] = Field(examples=[[905]])


class TokenizeExplanation(BaseModel):
    normalized: str = Field(
        description="The text after the tokenizer's normalizer (the text itself when it has none, as SmolLM2's); the pieces' offsets are into it.",
        examples=["Hello, world!"],
    )
    byte_level: bool = Field(
        description="Whether pieces are spelled in the byte-level alphabet (GPT-2's, SmolLM2's).", examples=[True]
    )
    pieces: list[TokenizePiece] = Field(description="In order; their ids, one after the other, are the answer's `ids`.")

    @classmethod
    def of(cls, explanation: BpeExplanation, byte_level: bool) -> TokenizeExplanation:
        return cls(
            normalized=explanation.normalized,
            byte_level=byte_level,
            pieces=[
                TokenizePiece(
                    text=p.text,
                    start=p.start,
                    end=p.end,
                    special=p.special,
                    byte_level=p.byte_level,
                    utf8=p.utf8,
                    initial=p.initial,
                    merges=[
                        BpeMerge(rank=m.rank, left=m.left, right=m.right, merged=m.merged, symbols=m.symbols)
                        for m in p.merges
                    ],
                    whole_word=p.whole_word,
                    tokens=p.tokens,
                    ids=p.ids,
                )
                for p in explanation.pieces
            ],
        )


class TokenizeResponse(BaseModel):
    ids: list[int] = Field(examples=[[19556, 28, 905, 17]])
    tokens: list[str] = Field(
        description="The text each token stands for, in order.", examples=[["Hello", ",", " world", "!"]]
    )
    offsets: list[tuple[int, int]] = Field(
        description="[start, end) character span of each token in `text`.",
        examples=[[[0, 5], [5, 6], [6, 12], [12, 13]]],
    )
    count: int = Field(examples=[4])
    model: str = Field(examples=["SmolLM2-135M-Instruct"])
    explain: TokenizeExplanation | None = Field(
        default=None, description="How the text became the tokens (present when `explain` was asked)."
    )


class DetokenizeRequest(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"ids": [19556, 28, 905, 17]}]})

    ids: list[int] = Field(description="Token ids, each in [0, vocab_size).")
    skip_special_tokens: bool = False


class DetokenizeResponse(BaseModel):
    text: str = Field(examples=["Hello, world!"])
    model: str = Field(examples=["SmolLM2-135M-Instruct"])


class TokenCandidate(BaseModel):
    id: int = Field(examples=[7042])
    token: str = Field(examples=[" Paris"])
    probability: float = Field(ge=0, le=1, examples=[0.7725])
    logprob: float = Field(examples=[-0.2581])


def _absent(value: object) -> bool:
    return value is None


class SamplerStage(BaseModel):
    """One step of the sampler and the distribution after it (service/language/sampler_explain.py)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "top_p",
                    "kept": 2,
                    "removed_mass": 0.1352,
                    "top": [
                        {"id": 7042, "token": " Paris", "probability": 0.9229, "logprob": -0.0802},
                        {"id": 260, "token": " the", "probability": 0.0771, "logprob": -2.5627},
                    ],
                }
            ]
        }
    )

    name: StageName = Field(
        description=(
            "The step, in the order the sampler applies them: `model` (softmax of the raw logits), then `grammar` "
            "(a constrained request's mask: only the tokens its `json_schema`, `regex` or `choice` allows next), "
            "`logit_bias`, `repetition_penalty`, `frequency_penalty`, `presence_penalty` (on the logits, so greedy "
            "sees them too), `temperature`, `min_p`, `top_k`, `top_p`; only those the request turns on."
        ),
        examples=["top_p"],
    )
    kept: int = Field(description="Tokens with nonzero probability after this step.", examples=[2])
    removed_mass: float = Field(
        ge=0,
        le=1,
        description=(
            "Probability mass this step took away: the total variation distance from the step before, "
            "sum over tokens of max(0, before - after). For a cut (`min_p`, `top_k`, `top_p`) it is exactly the "
            "mass of the tokens cut (the rest is renormalized); for a reshaping step (`logit_bias`, the penalties, "
            "`temperature`) the mass moved from the tokens that lost some to the others. 0 for `model`."
        ),
        examples=[0.1352],
    )
    top: list[TokenCandidate] = Field(
        description=(
            "Its likeliest tokens with nonzero probability (at most `top_alternatives`; on /next-token-probs "
            "`top_k`) and their probability after this step, likeliest first, ties by lower id: the order a draw walks."
        )
    )


class SamplerDraw(BaseModel):
    greedy: bool = Field(
        description="Greedy: the last stage's most likely token (ties: the lower id), no random number."
    )
    u: float | None = Field(
        default=None,
        exclude_if=_absent,
        description=(
            "Sampled: the uniform number in [0, 1) drawn from the request's seeded generator. The token is the "
            "first of the last stage's tokens, likeliest first, whose running total of probability exceeds `u`."
        ),
        examples=[0.5231],
    )
    rank: int = Field(
        description="The token's place in the last stage, likeliest first (0 = the most likely).", examples=[0]
    )


class StepExplanation(BaseModel):
    """Why a step's token was chosen: the model's distribution, each sampler step, and the draw."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "entropy": 1.3812,
                    "surprisal": 0.2581,
                    "margin": 0.7080,
                    "stages": [
                        {
                            "name": "model",
                            "kept": 49152,
                            "removed_mass": 0.0,
                            "top": [{"id": 7042, "token": " Paris", "probability": 0.7725, "logprob": -0.2581}],
                        }
                    ],
                    "draw": {"greedy": True, "rank": 0},
                }
            ]
        }
    )

    entropy: float = Field(
        description="Entropy, in nats, of the model's full distribution (softmax of the raw logits, temperature 1).",
        examples=[1.3812],
    )
    surprisal: float = Field(
        description="-log p of the chosen token under the model's distribution, in nats.", examples=[0.2581]
    )
    margin: float = Field(
        description="The probability of the model's likeliest token minus that of the second.", examples=[0.708]
    )
    stages: list[SamplerStage] = Field(
        description="The distribution after each sampler step, in order; the last is the one the token was drawn from."
    )
    draw: SamplerDraw


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
        exclude_if=_absent,
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
        default=None, exclude_if=_absent, description="Why this token was chosen (present with `explain`)."
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
        exclude_if=_absent,
        description="With `explain`: exp of the mean surprisal of the generated tokens under the model's distribution (1 = no surprise at all).",
        examples=[1.84],
    )
