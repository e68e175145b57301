"""Request and response bodies of the language endpoints (/tokenize, /detokenize, /next-token-probs, /generate).

Static bounds here reject nonsense early. Each request turns itself into engine parameters
(`to_sampling_params`, `to_distribution_params`), checked against the configured limits (`GENAI_MAX_*`,
shown by `/info`) and the loaded model by `validation.SamplingLimits`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.language.bpe_explain import BpeExplanation
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
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"text": "Hello, world!"}, {"text": "Hello, world!", "explain": True}]}
    )

    text: str = Field(description="Text to split into tokens (at most GENAI_MAX_TEXT_CHARS characters).")
    add_special_tokens: bool = Field(default=False, description="Add the tokenizer's special tokens (BOS and the like), as the model would see a prompt.")
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
    rank: int = Field(description="The merge's place in the tokenizer's merge list: the lowest-ranked pair of neighbours is merged first.", examples=[653])
    left: str = Field(examples=["Ġwor"])
    right: str = Field(examples=["ld"])
    merged: str = Field(description="The new symbol, a vocabulary entry.", examples=["Ġworld"])
    symbols: list[str] = Field(description="The piece's symbols after this merge.", examples=[["Ġworld"]])


class TokenizePiece(BaseModel):
    text: str = Field(description="The piece as it stands in `normalized` (empty for a token the tokenizer adds around the text).", examples=[" world"])
    start: int = Field(description="[start, end) character span of the piece in `normalized`.", examples=[6])
    end: int = Field(examples=[12])
    special: bool = Field(
        description="An added token (`<|im_end|>` and the like, with `parse_special`) or one added around the text (`add_special_tokens`): taken whole, no merges.",
        examples=[False],
    )
    byte_level: str = Field(description="The piece as the BPE sees it: for byte-level BPE each byte is one printable character (a space is `Ġ`, `é` is `Ã©`).", examples=["Ġworld"])
    utf8: list[int] = Field(description="The piece's UTF-8 bytes.", examples=[[32, 119, 111, 114, 108, 100]])
    initial: list[str] = Field(description="The symbols before any merge (one per byte-level character).", examples=[["Ġ", "w", "o", "r", "l", "d"]])
    merges: list[BpeMerge] = Field(description="Each merge applied, in order.")
    whole_word: bool = Field(description="The piece was in the vocabulary as a whole, so merges were skipped (tokenizers with `ignore_merges`).", examples=[False])
    tokens: list[str] = Field(description="The vocabulary entries the piece ends as (in the byte-level spelling).", examples=[["Ġworld"]])
    ids: list[int] = Field(examples=[[905]])


class TokenizeExplanation(BaseModel):
    normalized: str = Field(description="The text after the tokenizer's normalizer (the text itself when it has none, as SmolLM2's); the pieces' offsets are into it.", examples=["Hello, world!"])
    byte_level: bool = Field(description="Whether pieces are spelled in the byte-level alphabet (GPT-2's, SmolLM2's).", examples=[True])
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
                    merges=[BpeMerge(rank=m.rank, left=m.left, right=m.right, merged=m.merged, symbols=m.symbols) for m in p.merges],
                    whole_word=p.whole_word,
                    tokens=p.tokens,
                    ids=p.ids,
                )
                for p in explanation.pieces
            ],
        )


class TokenizeResponse(BaseModel):
    ids: list[int] = Field(examples=[[19556, 28, 905, 17]])
    tokens: list[str] = Field(description="The text each token stands for, in order.", examples=[["Hello", ",", " world", "!"]])
    offsets: list[tuple[int, int]] = Field(description="[start, end) character span of each token in `text`.", examples=[[[0, 5], [5, 6], [6, 12], [12, 13]]])
    count: int = Field(examples=[4])
    model: str = Field(examples=["SmolLM2-135M-Instruct"])
    explain: TokenizeExplanation | None = Field(default=None, description="How the text became the tokens (present when `explain` was asked).")


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
