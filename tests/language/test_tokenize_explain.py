"""/tokenize with `explain`: the BPE replay served. Its ids are the tokenizer's own answer in every mode
(special tokens parsed or not, added around the text or not), each merge builds a vocabulary entry, the
pieces cover the text; a served GPT-2 style model explains too, and a non-BPE tokenizer is a 422."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tokenizers
from tiny_models import save_tiny_gpt2, serve_folder
from tokenizers import AddedToken
from tokenizers.processors import TemplateProcessing

from service.language.bpe_explain import BpeExplainer
from service.language.exceptions import InvalidRequest, TokenizerNotExplainable

TEXTS = [
    "Hello, world!",
    "The capital of France is Paris.",
    "naïve café, 日本語, and an emoji 🙂 in one line",
    "  leading spaces\nand\ttabs  ",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "a  <|im_end|>  b<|im_end|><|im_end|>",
    "<|im_end",
    "",
]


def _check_pieces(explanation: dict[str, Any], text: str, vocab: dict[str, int]) -> None:
    """The pieces cover the text end to end, and every step of each is the tokenizer's own."""
    pieces = explanation["pieces"]
    assert explanation["normalized"] == text  # neither tokenizer here has a normalizer
    assert "".join(p["text"] for p in pieces) == text
    position = 0
    for piece in pieces:
        assert piece["start"] == position and text[piece["start"] : piece["end"]] == piece["text"]
        position = piece["end"]
        assert piece["utf8"] == list(piece["text"].encode("utf-8"))
        assert [vocab[t] for t in piece["tokens"]] == piece["ids"]
        if piece["special"]:
            assert piece["merges"] == [] and len(piece["ids"]) == 1
            continue
        assert "".join(piece["initial"]) == piece["byte_level"]
        symbols = piece["initial"]
        for merge in piece["merges"]:
            assert merge["merged"] == merge["left"] + merge["right"]
            assert merge["merged"] in vocab
            assert (merge["left"], merge["right"]) in itertools.pairwise(symbols)
            symbols = merge["symbols"]
        assert symbols == piece["tokens"]
    assert position == len(text)


@pytest.mark.parametrize("add_special_tokens", [False, True])
@pytest.mark.parametrize("parse_special", [True, False])
@pytest.mark.parametrize("text", TEXTS)
async def test_explained_ids_are_the_plain_answers(
    client: httpx.AsyncClient, language_model: Any, text: str, parse_special: bool, add_special_tokens: bool
) -> None:
    request = {"text": text, "parse_special": parse_special, "add_special_tokens": add_special_tokens}
    plain = (await client.post("/tokenize", json=request)).json()
    response = await client.post("/tokenize", json={**request, "explain": True})
    assert response.status_code == 200, response.text
    explained = response.json()
    assert "explain" not in plain  # today's answer is unchanged when it is not asked
    assert {k: v for k, v in explained.items() if k != "explain"} == plain
    explanation = explained["explain"]
    assert [i for piece in explanation["pieces"] for i in piece["ids"]] == plain["ids"]
    assert explanation["byte_level"] is True
    _check_pieces(explanation, text, language_model.tokenizer.get_vocab())


async def test_special_tokens_are_pieces_of_their_own_only_when_parsed(client: httpx.AsyncClient) -> None:
    text = "Hi<|im_end|> there"
    parsed = (await client.post("/tokenize", json={"text": text, "explain": True})).json()["explain"]["pieces"]
    specials = [p for p in parsed if p["special"]]
    assert [(p["text"], p["start"], p["end"], p["ids"]) for p in specials] == [("<|im_end|>", 2, 12, [2])]
    as_text = (await client.post("/tokenize", json={"text": text, "explain": True, "parse_special": False})).json()
    assert not any(p["special"] for p in as_text["explain"]["pieces"])
    assert 2 not in as_text["ids"] and len(as_text["ids"]) > 3


async def test_the_explainer_is_built_once_per_model(client: httpx.AsyncClient, language_model: Any) -> None:
    await client.post("/tokenize", json={"text": "once", "explain": True})
    assert language_model.bpe_explainer() is language_model.bpe_explainer()


async def test_a_text_too_long_to_show_is_refused_naming_explain(client: httpx.AsyncClient) -> None:
    """A long run of letters is one piece whose merges each record all its symbols: past the bound, a 422."""
    draw = random.Random(0)
    letters = "".join(draw.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(3000))
    response = await client.post("/tokenize", json={"text": letters, "explain": True})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "explain" and "too long to explain" in error["message"]
    assert (await client.post("/tokenize", json={"text": letters})).status_code == 200


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder: Path = save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2-explain"))
    return folder


@pytest.fixture(scope="module")
async def tiny_client(tiny_gpt2_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_folder(tiny_gpt2_dir) as client:
        yield client


@pytest.mark.parametrize("parse_special", [True, False])
async def test_a_served_gpt2_style_model_explains(
    tiny_client: httpx.AsyncClient, tiny_gpt2_dir: Path, parse_special: bool
) -> None:
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(tiny_gpt2_dir).get_vocab()
    for text in ["Once upon a time there was a tiny model.", "Hello<|endoftext|>world, unseen wörds"]:
        request = {"text": text, "parse_special": parse_special}
        plain = (await tiny_client.post("/tokenize", json=request)).json()
        explanation = (await tiny_client.post("/tokenize", json={**request, "explain": True})).json()["explain"]
        assert [i for piece in explanation["pieces"] for i in piece["ids"]] == plain["ids"]
        assert any(p["special"] for p in explanation["pieces"]) == (parse_special and "<|endoftext|>" in text)
        _check_pieces(explanation, text, vocab)


def _save_tiny_wordlevel_model(folder: Path) -> Path:
    """A tiny GPT-2 whose tokenizer is word-level (one id per whitespace-separated word), not BPE."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["<|endoftext|>", "[UNK]", "hello", "world", "the", "capital", "of", "France", "is", "Paris", "."]
    wordlevel = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]")
    )
    wordlevel.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=wordlevel, unk_token="[UNK]", eos_token="<|endoftext|>"
    )
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(words), n_positions=32, n_embd=16, n_layer=1, n_head=2, eos_token_id=0, bos_token_id=0
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


async def test_a_non_bpe_tokenizer_is_a_422_naming_explain(tmp_path: Path) -> None:
    async with serve_folder(_save_tiny_wordlevel_model(tmp_path)) as tiny:
        plain = await tiny.post("/tokenize", json={"text": "hello world"})
        assert plain.status_code == 200 and plain.json()["ids"] == [2, 3]
        for _ in range(2):  # the refusal is kept, and said the same way the second time
            response = await tiny.post("/tokenize", json={"text": "hello world", "explain": True})
            assert response.status_code == 422
            error = response.json()["error"]
            assert error["param"] == "explain" and error["code"] == 422
            assert "WordLevel" in error["message"] and "BPE" in error["message"]


# --------------------------------------------------------------------------------------------
# The replay itself, on a tokenizer with every kind of added token and a post-processor that adds some


def _with_added_tokens(rust: Any) -> Any:
    copy = tokenizers.Tokenizer.from_str(rust.to_str())
    copy.add_tokens(
        [
            AddedToken("<x>", lstrip=True, rstrip=True),  # takes the spaces around it
            AddedToken("word", single_word=True),  # only as a word of its own
            AddedToken("<|im", special=False),  # a plain added token inside a special token's text
        ]
    )
    copy.post_processor = TemplateProcessing(
        single="<|im_start|> $A <|im_end|>", special_tokens=[("<|im_start|>", 1), ("<|im_end|>", 2)]
    )
    return copy


ADDED_TEXTS = [
    "x <x>  y<x>z",
    "word words sword word_ word",
    "<|im_end|> and <|im alone",
    "<|im_start|>user\nhi<|im_end|>\n",
    "",
]


@pytest.mark.parametrize("add_special_tokens", [False, True])
@pytest.mark.parametrize("parse_special", [True, False])
def test_added_tokens_and_a_post_processor_are_replayed(
    language_model: Any, parse_special: bool, add_special_tokens: bool
) -> None:
    rust = _with_added_tokens(language_model.tokenizer.backend_tokenizer)
    reference = tokenizers.Tokenizer.from_str(rust.to_str())
    reference.encode_special_tokens = not parse_special
    explainer = BpeExplainer(rust)
    for text in ADDED_TEXTS:
        expected = reference.encode(text, add_special_tokens=add_special_tokens).ids
        explanation = explainer.explain(text, parse_special=parse_special, add_special_tokens=add_special_tokens)
        assert explanation.ids == expected, text
        assert "".join(p.text for p in explanation.pieces) == text
        if add_special_tokens:
            assert explanation.pieces[0].ids == [1] and explanation.pieces[-1].ids == [2]
            assert explanation.pieces[0].special and explanation.pieces[0].text == ""


def test_a_replay_that_differs_from_the_tokenizer_is_refused(language_model: Any) -> None:
    explainer = language_model.bpe_explainer()
    with pytest.raises(TokenizerNotExplainable, match="other ids than the tokenizer") as refused:
        explainer.explain("Hello", expected_ids=[1])
    assert isinstance(refused.value, InvalidRequest) and refused.value.field == "explain"
    assert explainer.explain("Hello", expected_ids=language_model.encode("Hello")).ids == language_model.encode("Hello")
