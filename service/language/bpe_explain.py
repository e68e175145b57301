"""How text becomes tokens, step by step, for byte-pair-encoding tokenizers (SmolLM2's, GPT-2's, Llama 3's).

The `tokenizers` library does this in Rust and shows only the result. Here the same three stages are
replayed from the tokenizer's own definition (its `tokenizer.json`):
  1. normalization (if the tokenizer has a normalizer) and pre-tokenization into pieces (for byte-level
     BPE, each piece's bytes are spelled as printable characters: a space is `Ġ`, `é` is `Ã©`);
  2. each piece starts as single symbols and the merge with the best (lowest) rank among adjacent pairs is
     applied, again and again, until no pair of neighbours has a merge: every step is recorded;
  3. the final symbols are looked up in the vocabulary (bytes without a symbol of their own fall back to
     `<0xNN>` tokens when the tokenizer has byte fallback).
The replay gives the same ids as the tokenizer itself (tested on both tokenizers over varied text).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class TokenizerNotExplainable(Exception):
    """The tokenizer is not a BPE tokenizer this module can replay (WordPiece, Unigram, BPE with dropout)."""


@dataclass(frozen=True)
class Merge:
    rank: int  # position in the tokenizer's merge list: lower merges first
    left: str
    right: str
    merged: str
    symbols: list[str]  # the piece's symbols after this merge


@dataclass(frozen=True)
class Piece:
    text: str  # the piece as it appears in the (normalized) text
    start: int  # character offsets in the normalized text
    end: int
    byte_level: str  # the piece as the BPE model sees it (byte-level characters for byte-level BPE)
    utf8: list[int]  # the piece's UTF-8 bytes
    initial: list[str]  # the symbols before any merge
    merges: list[Merge]
    whole_word: bool  # the piece was in the vocabulary as a whole and merges were skipped (`ignore_merges`)
    tokens: list[str]
    ids: list[int]


@dataclass(frozen=True)
class BpeExplanation:
    normalized: str
    pieces: list[Piece]

    @property
    def ids(self) -> list[int]:
        return [i for piece in self.pieces for i in piece.ids]


class BpeExplainer:
    """Replays one BPE tokenizer. Built once per tokenizer (reads its merge table, ~50k pairs, in ~0.1 s)."""

    def __init__(self, rust_tokenizer: Any) -> None:
        definition = json.loads(rust_tokenizer.to_str())
        model = definition.get("model") or {}
        if model.get("type") != "BPE":
            raise TokenizerNotExplainable(
                f"explain is supported for byte-pair-encoding (BPE) tokenizers; this model's tokenizer is {model.get('type')!r}"
            )
        if model.get("dropout"):
            raise TokenizerNotExplainable("this BPE tokenizer uses dropout (random merges), so its merges cannot be replayed")
        self._rust = rust_tokenizer
        self._vocab: dict[str, int] = dict(model["vocab"])
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        self._ranks: dict[tuple[str, str], int] = {}
        for rank, (left, right) in enumerate(merges):
            self._ranks.setdefault((left, right), rank)
        self._ignore_merges = bool(model.get("ignore_merges"))
        self._byte_fallback = bool(model.get("byte_fallback"))
        self._prefix = model.get("continuing_subword_prefix") or ""
        self._suffix = model.get("end_of_word_suffix") or ""
        self._byte_level = _uses_byte_level(definition.get("pre_tokenizer"))
        unk = model.get("unk_token")
        self._unk_id = self._vocab.get(unk) if unk else None

    def explain(self, text: str) -> BpeExplanation:
        normalizer = self._rust.normalizer
        normalized = normalizer.normalize_str(text) if normalizer is not None else text
        pre = self._rust.pre_tokenizer
        splits = pre.pre_tokenize_str(normalized) if pre is not None else [(normalized, (0, len(normalized)))]
        return BpeExplanation(normalized=normalized, pieces=[self._piece(normalized, word, span) for word, span in splits])

    def _piece(self, normalized: str, word: str, span: tuple[int, int]) -> Piece:
        start, end = span
        original = normalized[start:end]
        initial = self._initial_symbols(word)
        whole = self._ignore_merges and word in self._vocab
        symbols = [word] if whole else list(initial)
        merges: list[Merge] = []
        while not whole and len(symbols) > 1:
            best = min(
                ((self._ranks[pair], i) for i, pair in enumerate(zip(symbols, symbols[1:])) if pair in self._ranks),
                default=None,
            )
            if best is None:
                break
            rank = best[0]
            left, right = symbols[best[1]], symbols[best[1] + 1]
            merged = _join(left, right, self._prefix)
            symbols = _merge_all(symbols, left, right, merged)
            merges.append(Merge(rank=rank, left=left, right=right, merged=merged, symbols=list(symbols)))
        tokens, ids = self._lookup(symbols)
        return Piece(
            text=original,
            start=start,
            end=end,
            byte_level=word,
            utf8=list(original.encode("utf-8")),
            initial=initial,
            merges=merges,
            whole_word=whole,
            tokens=tokens,
            ids=ids,
        )

    def _initial_symbols(self, word: str) -> list[str]:
        """Single characters, the tokenizer's continuing-subword prefix on all but the first and its
        end-of-word suffix on the last (both empty for byte-level BPE)."""
        chars = list(word)
        symbols = [c if i == 0 else self._prefix + c for i, c in enumerate(chars)]
        if symbols and self._suffix:
            symbols[-1] += self._suffix
        return symbols

    def _lookup(self, symbols: list[str]) -> tuple[list[str], list[int]]:
        tokens: list[str] = []
        ids: list[int] = []
        for symbol in symbols:
            if symbol in self._vocab:
                tokens.append(symbol)
                ids.append(self._vocab[symbol])
            elif self._byte_fallback and all(f"<0x{b:02X}>" in self._vocab for b in symbol.encode("utf-8")):
                for b in symbol.encode("utf-8"):
                    tokens.append(f"<0x{b:02X}>")
                    ids.append(self._vocab[f"<0x{b:02X}>"])
            elif self._unk_id is not None:
                tokens.append(symbol)
                ids.append(self._unk_id)
            else:  # the tokenizer itself drops a symbol it cannot represent
                continue
        return tokens, ids

    @property
    def byte_level(self) -> bool:
        return self._byte_level


def _merge_all(symbols: list[str], left: str, right: str, merged: str) -> list[str]:
    """Merge every non-overlapping (left, right) neighbour pair, left to right (what the Rust BPE does for
    one rank: equal pairs share a rank and the leftmost is merged first)."""
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == left and symbols[i + 1] == right:
            out.append(merged)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def _join(left: str, right: str, prefix: str) -> str:
    return left + (right[len(prefix) :] if prefix and right.startswith(prefix) else right)


def _uses_byte_level(pre_tokenizer: dict[str, Any] | None) -> bool:
    if not pre_tokenizer:
        return False
    if pre_tokenizer.get("type") == "ByteLevel":
        return True
    return any(_uses_byte_level(p) for p in pre_tokenizer.get("pretokenizers") or [])
