"""Request and response bodies of the language endpoints (/tokenize, /detokenize, /next-token-probs, /generate).

Static bounds here reject nonsense early. Each request turns itself into engine parameters
(`to_sampling_params`, `to_distribution_params`), checked against the configured limits (`GENAI_MAX_*`,
shown by `/info`) and the loaded model by `validation.SamplingLimits`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.language.sampling import SamplingParams
from service.language.validation import DistributionParams, SamplingLimits
from service.schemas import (
    ParseSpecial,
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
    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "Hello, world!"}]})

    text: str = Field(description="Text to split into tokens (at most GENAI_MAX_TEXT_CHARS characters).")
    add_special_tokens: bool = Field(default=False, description="Add the tokenizer's special tokens (BOS and the like), as the model would see a prompt.")
    parse_special: ParseSpecial = True


class TokenizeResponse(BaseModel):
    ids: list[int] = Field(examples=[[19556, 28, 905, 17]])
    tokens: list[str] = Field(description="The text each token stands for, in order.", examples=[["Hello", ",", " world", "!"]])
    offsets: list[tuple[int, int]] = Field(description="[start, end) character span of each token in `text`.", examples=[[[0, 5], [5, 6], [6, 12], [12, 13]]])
    count: int = Field(examples=[4])
    model: str = Field(examples=["SmolLM2-135M-Instruct"])


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


class NextTokenRequest(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"prompt": "The capital of France is", "top_k": 5}]})

    prompt: str = Field(min_length=1, description="The text whose continuation is asked for.")
    top_k: int = Field(default=10, ge=1, description="How many candidates to return (at most GENAI_MAX_TOP_K, default 100).")
    temperature: Temperature | None = Field(
        default=None, description="Divide the logits by this before the softmax (default 1: the model's own distribution; 0 to 100)."
    )
    add_special_tokens: bool = Field(default=False, description="Tokenize the prompt with the tokenizer's special tokens.")
    parse_special: ParseSpecial = True

    def to_distribution_params(self, limits: SamplingLimits) -> DistributionParams:
        return limits.check_distribution(DistributionParams(top_k=self.top_k, temperature=1.0 if self.temperature is None else self.temperature))


class NextTokenResponse(BaseModel):
    candidates: list[TokenCandidate] = Field(description="Most likely first. Probabilities come from softmax(logits / temperature) over the whole vocabulary, before any sampling filter.")
    prompt_tokens: int = Field(examples=[5])
    temperature: float = Field(examples=[1.0])
    model: str = Field(examples=["SmolLM2-135M-Instruct"])


class ChatMessage(RequestModel):
    role: Literal["system", "user", "assistant"]
    content: str


class GenerateRequest(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"prompt": "The capital of France is", "max_new_tokens": 8},
                {"prompt": "Once upon a time", "max_new_tokens": 20, "do_sample": True, "temperature": 0.8, "top_p": 0.95, "seed": 42},
                {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_new_tokens": 30},
                {"prompt": "The capital of France is", "max_new_tokens": 3, "top_alternatives": 3},
            ]
        },
    )

    prompt: str | None = Field(default=None, min_length=1, description="Raw text to continue. Give this or `messages`.")
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, description="Chat form: rendered with the model's chat template.")
    max_new_tokens: int = Field(default=64, ge=1, description="Tokens to generate at most (at most GENAI_MAX_NEW_TOKENS, default 512).")
    do_sample: bool = Field(default=False, description="false = greedy (always the most likely token); true = sample.")
    temperature: Temperature = 1.0
    top_k: TopK = 0
    top_p: TopP = 1.0
    repetition_penalty: RepetitionPenalty = 1.0
    seed: Seed | None = None
    stop: StopStrings = None
    ignore_eos: bool = Field(default=False, description="Keep generating past the end-of-sequence token (exact lengths for benchmarks).")
    top_alternatives: int = Field(default=0, ge=0, description="Per step, also return the k most likely tokens with their probabilities (at most GENAI_MAX_TOP_ALTERNATIVES).")
    stream: bool = Field(default=False, description="Answer as Server-Sent Events, one event per token.")
    timeout_s: TimeoutSeconds | None = None
    add_special_tokens: bool = Field(default=False, description="Tokenize the prompt with the tokenizer's special tokens (ignored for messages).")
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
                seed=self.seed,
                stop=tuple(self.stop or ()),
                ignore_eos=self.ignore_eos,
                top_alternatives=self.top_alternatives,
                timeout_s=self.timeout_s,
            )
        )


class StepDetail(BaseModel):
    index: int
    id: int
    token: str
    probability: float
    logprob: float
    alternatives: list[TokenCandidate] | None = Field(default=None, description="The most likely tokens at this step (present when `top_alternatives` > 0).")


class Timing(BaseModel):
    queue_seconds: float = Field(description="Waiting for a place in the batch.")
    time_to_first_token_seconds: float | None
    total_seconds: float
    tokens_per_second: float | None = Field(description="Decoding speed after the first token.")


class GenerateResponse(BaseModel):
    text: str = Field(examples=[" Paris.\n\nThe"])
    ids: list[int] = Field(description="Generated token ids (an end-of-sequence token included when it ended the text).", examples=[[7042, 30, 198, 198, 504]])
    finish_reason: Literal["length", "stop", "eos", "time_limit", "cancelled"] = Field(examples=["length"])
    usage: Usage
    timing: Timing
    steps: list[StepDetail] | None = Field(default=None, description="Per generated token: its probability and the alternatives (when `top_alternatives` > 0).")
    model: str = Field(examples=["SmolLM2-135M-Instruct"])
