"""The body of `POST /v1/embeddings` and its answer, in OpenAI's shapes.

The request turns itself into the engine's inputs (`token_inputs`): each text tokenized as a `/v1/completions`
prompt is (no special token added), each token-id list checked against the vocabulary, every input held to
the prompt-token limit and named in its error as `input` (a single input) or `input[i]`.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.config import Settings
from service.language.embeddings import MAX_INPUTS, MAX_REQUEST_TOKENS, hidden_size
from service.language.exceptions import InvalidRequest
from service.language.model import LanguageModel
from service.language.validation import check_prompt_ids, check_token_ids, encode_prompt
from service.schemas import RequestModel

EncodingFormat = Literal["float", "base64"]


class EmbeddingRequest(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"model": "SmolLM2-135M-Instruct", "input": "The capital of France is Paris."},
                {"input": ["The capital of France is Paris.", "Paris is in France."], "encoding_format": "base64"},
                {"input": [[504, 3575, 282, 4649]]},
            ]
        },
    )

    input: str | list[str] | list[int] | list[list[int]] = Field(
        description=f"A text, a list of texts, token ids, or a list of token-id lists; at most {MAX_INPUTS} inputs, "
        f"{MAX_REQUEST_TOKENS} tokens in all, each non-empty and within the prompt-token limit."
    )
    model: str | None = Field(
        default=None, description="The served model's id (see `GET /v1/models`); empty = that model."
    )
    encoding_format: EncodingFormat = Field(
        default="float",
        description="`float`: a list of numbers; `base64`: the vector's little-endian float32 bytes, base64-encoded "
        "(as OpenAI; the `openai` package asks for it and decodes it).",
    )
    dimensions: int | None = Field(
        default=None, ge=1, description="Only the model's own size (its hidden size): vectors are not truncated."
    )
    user: str | None = Field(default=None, description="Accepted and ignored.")

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        """Some clients send every field, unset ones as `null`: treat those as absent, as OpenAI does."""
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data

    @field_validator("input")
    @classmethod
    def _some_input(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("must not be an empty list")
        return value

    def inputs(self) -> list[tuple[str, str | list[int]]]:
        """Each input with the name its errors give it: `input` for a single one, else `input[i]`."""
        p = self.input
        if isinstance(p, str):
            return [("input", p)]
        ids = [x for x in p if isinstance(x, int)]
        if len(ids) == len(p):
            return [("input", ids)]
        named: list[tuple[str, str | list[int]]] = []
        for i, x in enumerate(p):
            if isinstance(x, str):
                named.append((f"input[{i}]", x))
            elif isinstance(x, list):
                named.append((f"input[{i}]", list(x)))
        return named

    def token_inputs(self, lm: LanguageModel, settings: Settings) -> list[list[int]]:
        """Every input as token ids, checked; the first problem is an InvalidRequest naming its field."""
        if self.dimensions is not None and self.dimensions != hidden_size(lm):
            raise InvalidRequest(
                "dimensions",
                f"dimensions = {self.dimensions} is not supported: this model's vectors have {hidden_size(lm)} "
                "dimensions (its hidden size) and are not truncated; leave dimensions out or send that",
            )
        named = self.inputs()
        if len(named) > MAX_INPUTS:
            raise InvalidRequest("input", f"input has {len(named)} inputs; the limit is {MAX_INPUTS} per request")
        token_lists: list[list[int]] = []
        for name, item in named:
            if isinstance(item, str):
                if not item:
                    raise InvalidRequest(name, f"{name} is an empty string")
                ids = encode_prompt(lm, settings, prompt=item, field=name)
            else:
                check_token_ids(lm, item, field=name)
                check_prompt_ids(item, lm, settings, name)  # an empty list is refused here
                ids = item
            token_lists.append(ids)
        total = sum(len(ids) for ids in token_lists)
        if total > MAX_REQUEST_TOKENS:
            raise InvalidRequest("input", f"input has {total} tokens in all; the limit is {MAX_REQUEST_TOKENS}")
        return token_lists


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="The unit vector: numbers, or base64 of float32 bytes.")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage

    @classmethod
    def of(cls, vectors: torch.Tensor, encoding_format: EncodingFormat, model: str, tokens: int) -> EmbeddingResponse:
        """`vectors` float32 [inputs, hidden], in the inputs' order."""
        rows = vectors.to(torch.float32).numpy()
        data = [
            Embedding(index=i, embedding=_base64(row) if encoding_format == "base64" else row.tolist())
            for i, row in enumerate(rows)
        ]
        return cls(data=data, model=model, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))


def _base64(row: np.ndarray[Any, np.dtype[np.float32]]) -> str:
    return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
