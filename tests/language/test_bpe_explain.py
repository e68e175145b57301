"""The BPE replay against the tokenizers themselves: same ids on varied text, for the embedded model's
tokenizer and for a byte-level BPE tokenizer the test trains; every merge is one of the tokenizer's own."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import tokenizers
from tiny_models import save_tiny_tokenizer

from service.language.bpe_explain import BpeExplainer, TokenizerNotExplainable

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing  ",
    "numbers 1234567890 and 3.14159",
    "héllo wörld, naïve café 日本語 😀👍🏽",
    "def f(x):\n    return x ** 2\n\n\tindented",
    "<|im_end|> looks special but is text here",
    "unbelievably antidisestablishmentarianism",
    "a",
    "",
    "aaaaaaaaaaaaaaaaaaaaaa",
    "\u200b zero width and \u00a0 nbsp",
]


def _rust_text_tokenizer(rust: Any) -> Any:
    copy = tokenizers.Tokenizer.from_str(rust.to_str())
    copy.encode_special_tokens = True
    return copy


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return save_tiny_tokenizer(Path(tmp_path_factory.mktemp("tiny-bpe"))).backend_tokenizer


@pytest.mark.parametrize("which", ["embedded", "tiny"])
def test_replay_gives_the_tokenizers_own_ids(which: str, language_model: Any, tiny_tokenizer: Any) -> None:
    rust = language_model.tokenizer.backend_tokenizer if which == "embedded" else tiny_tokenizer
    explainer = BpeExplainer(rust)
    reference = _rust_text_tokenizer(rust)
    for text in TEXTS:
        explanation = explainer.explain(text)
        assert explanation.ids == reference.encode(text, add_special_tokens=False).ids, text


def test_each_step_is_one_of_the_tokenizers_merges(language_model: Any) -> None:
    rust = language_model.tokenizer.backend_tokenizer
    definition = json.loads(rust.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in definition["merges"]]
    explanation = BpeExplainer(rust).explain(" unbelievably")
    (piece,) = explanation.pieces
    assert piece.byte_level == "Ġunbelievably"
    assert piece.initial == list("Ġunbelievably")
    assert piece.merges, "a long word needs merges"
    symbols = piece.initial
    for merge in piece.merges:
        assert merges[merge.rank] == (merge.left, merge.right)
        assert merge.merged == merge.left + merge.right
        # the merge applied is the best-ranked pair present before it
        present = [merges.index(p) for p in pairwise(symbols) if p in merges]
        assert merge.rank == min(present)
        symbols = merge.symbols
    assert symbols == piece.tokens
    assert piece.utf8 == list(b" unbelievably")
    assert (piece.start, piece.end, piece.text) == (0, 13, " unbelievably")


def test_byte_level_spelling_of_non_ascii(language_model: Any) -> None:
    explanation = BpeExplainer(language_model.tokenizer.backend_tokenizer).explain("café")
    (piece,) = explanation.pieces
    assert piece.byte_level == "cafÃ©"  # é is the bytes C3 A9, spelled as two printable characters
    assert piece.utf8 == [0x63, 0x61, 0x66, 0xC3, 0xA9]


def test_a_non_bpe_tokenizer_is_refused() -> None:
    wordlevel = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(TokenizerNotExplainable, match="WordLevel"):
        BpeExplainer(wordlevel)
