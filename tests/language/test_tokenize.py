"""/tokenize and /detokenize against the real tokenizer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from service.language.model import LanguageModel

TEXTS = [
    "Hello, world!",
    "The capital of France is Paris.",
    "naïve café, 日本語, and an emoji 🙂 in one line",
    "  leading spaces\nand\ttabs  ",
]


@pytest.mark.parametrize("text", TEXTS)
async def test_tokenize_then_detokenize_gives_back_the_text(client: httpx.AsyncClient, text: str) -> None:
    tokenized = (await client.post("/tokenize", json={"text": text})).json()
    assert tokenized["count"] == len(tokenized["ids"]) == len(tokenized["tokens"]) == len(tokenized["offsets"])
    restored = await client.post("/detokenize", json={"ids": tokenized["ids"]})
    assert restored.status_code == 200
    assert restored.json()["text"] == text


async def test_tokens_and_offsets_describe_the_text(client: httpx.AsyncClient, language_model: LanguageModel) -> None:
    text = "The capital of France is Paris."
    body = (await client.post("/tokenize", json={"text": text})).json()
    assert body["ids"] == language_model.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert "".join(body["tokens"]) == text
    for token, (start, end) in zip(body["tokens"], body["offsets"], strict=True):
        assert text[start:end].strip() == token.strip()
    assert body["offsets"][-1][1] == len(text)


async def test_empty_text_has_no_tokens(client: httpx.AsyncClient) -> None:
    body = (await client.post("/tokenize", json={"text": ""})).json()
    assert body["count"] == 0 and body["ids"] == []


async def test_ids_outside_the_vocabulary_are_refused(client: httpx.AsyncClient, language_model: LanguageModel) -> None:
    for bad in ([language_model.vocab_size], [-1], [5, 10**12]):
        response = await client.post("/detokenize", json={"ids": bad})
        assert response.status_code == 422, bad
        error = response.json()["error"]
        assert error["param"] == "ids" and "vocabulary" in error["message"]


async def test_tokenize_rejects_wrong_types_and_unknown_fields(client: httpx.AsyncClient) -> None:
    for body in ({"text": 5}, {}, {"text": "x", "colour": "red"}):
        response = await client.post("/tokenize", json=body)
        assert response.status_code == 422, body
        assert response.json()["error"]["code"] == 422


@pytest.mark.parametrize("add_special_tokens", [False, True])
@pytest.mark.parametrize("text", TEXTS)
async def test_ids_and_offsets_are_transformers_own(
    client: httpx.AsyncClient, language_model: LanguageModel, text: str, add_special_tokens: bool
) -> None:
    """The service calls the `tokenizers` object directly; it must give what transformers' tokenizer gives."""
    body = (await client.post("/tokenize", json={"text": text, "add_special_tokens": add_special_tokens})).json()
    expected = language_model.tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    assert body["ids"] == expected["input_ids"]
    assert [tuple(o) for o in body["offsets"]] == [tuple(o) for o in expected["offset_mapping"]]
    assert language_model.encode(text, add_special_tokens=add_special_tokens) == expected["input_ids"]
