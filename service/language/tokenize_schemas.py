"""Request and response bodies of /tokenize and /detokenize (with /tokenize's `explain`: how BPE made the tokens)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from service.language.bpe_explain import BpeExplanation
from service.schemas import ParseSpecial, RequestModel


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
