"""How text becomes tokens, step by step, for byte-pair-encoding tokenizers (SmolLM2's, GPT-2's, Llama 3's).

The `tokenizers` library does this in Rust and shows only the result. Here the same three stages are
replayed from the tokenizer's own definition (its `tokenizer.json`):
  1. normalization (if the tokenizer has a normalizer) and pre-tokenization into pieces (for byte-level
     BPE, each piece's bytes are spelled as printable characters: a space is `Ġ`, `é` is `Ã©`);
  2. each piece starts as single symbols and the merge with the best (lowest) rank among adjacent pairs is
     applied, again and again, until no pair of neighbours has a merge: every step is recorded;
  3. the final symbols are looked up in the vocabulary (bytes without a symbol of their own fall back to
     `<0xNN>` tokens when the tokenizer has byte fallback).
Added tokens (`<|im_end|>` and the like) are split out of the text before all this, as the tokenizer
does: with `parse_special` all of them, without it only the non-special ones (special-token text is then
plain text); each is a piece of its own, taken whole. With `add_special_tokens` the tokens the
tokenizer's post-processor puts around the text (a BOS, say) are pieces too.
The replay gives the same ids as the tokenizer itself (tested on both tokenizers over varied text); given
the tokenizer's own ids, `explain` refuses rather than show a replay that differs from them.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from service.language.exceptions import InvalidRequest, TokenizerNotExplainable

__all__ = ["BpeExplainer", "BpeExplanation", "Merge", "Piece", "TokenizerNotExplainable"]

# Each merge records the piece's symbols after it, so a piece of n symbols can cost ~n²/2 of them (a long
# run of letters without spaces). Past this many symbols recorded (initial ones included) the text is
# refused: it bounds the replay's time and the answer's size. English prose needs ~3.5 per character, so
# this is ~14,000 characters of it (~0.4 s and ~1.5 MB of JSON); a 2,000-character text takes ~15 ms.
MAX_RECORDED_SYMBOLS = 50_000


@dataclass(frozen=True)
class AddedToken:
    """One of the tokenizer's added tokens (`added_tokens` in its JSON), split out of the text before the BPE."""

    id: int
    content: str
    special: bool
    single_word: bool  # only where it stands as a word of its own
    lstrip: bool  # takes the whitespace before it
    rstrip: bool  # takes the whitespace after it
    normalized: bool  # matched in the normalized text (else in the raw text)


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
    special: bool = False  # an added token taken whole (or one the post-processor adds): no BPE, no merges


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
            raise TokenizerNotExplainable(
                "this BPE tokenizer uses dropout (random merges), so its merges cannot be replayed"
            )
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
        added = [_added_token(t) for t in definition.get("added_tokens") or []]
        self._raw_added = _AddedMatcher.of([t for t in added if not t.normalized], lambda content: content)
        self._normalized_added = _AddedMatcher.of([t for t in added if t.normalized], self._normalize)
        self._around = _post_processor_tokens(definition.get("post_processor"))

    def explain(
        self,
        text: str,
        *,
        parse_special: bool = False,
        add_special_tokens: bool = False,
        expected_ids: Sequence[int] | None = None,
    ) -> BpeExplanation:
        """The replay of `text`; with `expected_ids` (the tokenizer's own answer), refused if it differs.

        Offsets are into `normalized`: the text with each segment between raw added tokens normalized
        (the text itself when the tokenizer has no normalizer)."""
        budget = _Budget(MAX_RECORDED_SYMBOLS)
        pieces: list[Piece] = []
        parts: list[str] = []
        position = 0
        for token, segment in _split(text, self._raw_added, parse_special):
            normalized_parts = (
                [(token, segment)]
                if token is not None
                else _split(self._normalize(segment), self._normalized_added, parse_special)
            )
            for inner_token, part in normalized_parts:
                if inner_token is not None:
                    pieces.append(_added_piece(inner_token.content, inner_token.id, part, position))
                else:
                    pieces.extend(self._text_pieces(part, position, budget))
                parts.append(part)
                position += len(part)
        if add_special_tokens:
            before, after = self._around
            pieces = (
                [_added_piece(t, i, "", 0) for t, i in before]
                + pieces
                + [_added_piece(t, i, "", position) for t, i in after]
            )
        explanation = BpeExplanation(normalized="".join(parts), pieces=pieces)
        if expected_ids is not None and explanation.ids != list(expected_ids):
            raise TokenizerNotExplainable(_difference(explanation.ids, list(expected_ids)))
        return explanation

    def _normalize(self, text: str) -> str:
        normalizer = self._rust.normalizer
        return normalizer.normalize_str(text) if normalizer is not None else text

    def _text_pieces(self, normalized: str, offset: int, budget: _Budget) -> list[Piece]:
        """Pre-tokenization of one segment between added tokens, then the BPE of each of its pieces."""
        if not normalized:
            return []
        pre = self._rust.pre_tokenizer
        splits = pre.pre_tokenize_str(normalized) if pre is not None else [(normalized, (0, len(normalized)))]
        return [self._piece(normalized, word, span, offset, budget) for word, span in splits]

    def _piece(self, normalized: str, word: str, span: tuple[int, int], offset: int, budget: _Budget) -> Piece:
        start, end = span
        original = normalized[start:end]
        initial = self._initial_symbols(word)
        whole = self._ignore_merges and word in self._vocab
        symbols = [word] if whole else list(initial)
        budget.spend(len(initial), original)
        merges: list[Merge] = []
        while not whole and len(symbols) > 1:
            best = min(
                ((self._ranks[pair], i) for i, pair in enumerate(itertools.pairwise(symbols)) if pair in self._ranks),
                default=None,
            )
            if best is None:
                break
            rank = best[0]
            left, right = symbols[best[1]], symbols[best[1] + 1]
            merged = _join(left, right, self._prefix)
            symbols = _merge_all(symbols, left, right, merged)
            merges.append(Merge(rank=rank, left=left, right=right, merged=merged, symbols=list(symbols)))
            budget.spend(len(symbols), original)
        tokens, ids = self._lookup(symbols)
        return Piece(
            text=original,
            start=offset + start,
            end=offset + end,
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


class _Budget:
    """The symbols one explanation may still record (see MAX_RECORDED_SYMBOLS)."""

    def __init__(self, symbols: int) -> None:
        self.total = self.left = symbols

    def spend(self, symbols: int, piece: str) -> None:
        self.left -= symbols
        if self.left < 0:
            raise InvalidRequest(
                "explain",
                f"the text is too long to explain step by step: its pieces and merges record over {self.total:,} "
                f"symbols (reached in the piece {piece[:20]!r}...); explain a shorter text",
            )


@dataclass(frozen=True)
class _AddedMatcher:
    """Finds added tokens as the tokenizer does: leftmost-longest, without overlaps (an alternation of the
    contents, longest first, is leftmost-longest for literal strings)."""

    pattern: re.Pattern[str]
    tokens: dict[str, AddedToken]  # by the text matched

    @classmethod
    def of(cls, tokens: list[AddedToken], spelling: Callable[[str], str]) -> _AddedMatcher | None:
        by_text = {spelling(t.content): t for t in tokens if t.content}
        if not by_text:
            return None
        alternation = "|".join(re.escape(c) for c in sorted(by_text, key=len, reverse=True))
        return cls(pattern=re.compile(alternation), tokens=by_text)


def _split(text: str, matcher: _AddedMatcher | None, parse_special: bool) -> list[tuple[AddedToken | None, str]]:
    """`text` cut into added tokens (with the whitespace they strip) and the segments between them. Without
    `parse_special` a special token's text is left as text (it still hides what it contains, as in the tokenizer)."""
    if matcher is None or not text:
        return [(None, text)] if text else []
    splits: list[tuple[AddedToken | None, str]] = []
    done = 0
    for match in matcher.pattern.finditer(text):
        token = matcher.tokens[match.group()]
        start, stop = match.start(), match.end()
        if token.special and not parse_special:
            continue
        if start < done:  # inside whitespace a previous token stripped
            continue
        if token.single_word and (_is_word_char(text[start - 1 : start]) or _is_word_char(text[stop : stop + 1])):
            continue
        if token.lstrip:
            start = max(len(text[:start].rstrip()), done)
        if token.rstrip:
            stop = len(text) - len(text[stop:].lstrip())
        if done < start:
            splits.append((None, text[done:start]))
        splits.append((token, text[start:stop]))
        done = stop
    if done < len(text):
        splits.append((None, text[done:]))
    return splits


def _is_word_char(char: str) -> bool:
    return bool(char) and (char.isalnum() or char == "_")


def _added_token(entry: dict[str, Any]) -> AddedToken:
    return AddedToken(
        id=int(entry["id"]),
        content=str(entry["content"]),
        special=bool(entry.get("special")),
        single_word=bool(entry.get("single_word")),
        lstrip=bool(entry.get("lstrip")),
        rstrip=bool(entry.get("rstrip")),
        normalized=bool(entry.get("normalized")),
    )


def _added_piece(content: str, token_id: int, text: str, start: int) -> Piece:
    """An added token as a piece: taken whole, so its one symbol is the token and there are no merges."""
    return Piece(
        text=text,
        start=start,
        end=start + len(text),
        byte_level=content,
        utf8=list(text.encode("utf-8")),
        initial=[content],
        merges=[],
        whole_word=False,
        tokens=[content],
        ids=[token_id],
        special=True,
    )


def _post_processor_tokens(processor: dict[str, Any] | None) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """The (token, id) pairs the post-processor puts before and after a single text with `add_special_tokens`.
    Post-processors of other kinds add nothing here; should one add tokens, the ids check refuses the replay."""
    if not processor:
        return [], []
    kind = processor.get("type")
    if kind == "TemplateProcessing":
        before: list[tuple[str, int]] = []
        after: list[tuple[str, int]] = []
        seen_text = False
        for item in processor.get("single") or []:
            if "Sequence" in item:
                seen_text = True
            elif "SpecialToken" in item:
                entry = processor["special_tokens"][item["SpecialToken"]["id"]]
                (after if seen_text else before).extend(zip(entry["tokens"], entry["ids"], strict=True))
        return before, after
    if kind in ("RobertaProcessing", "BertProcessing"):
        (cls_token, cls_id), (sep_token, sep_id) = processor["cls"], processor["sep"]
        return [(cls_token, int(cls_id))], [(sep_token, int(sep_id))]
    if kind == "Sequence":
        before, after = [], []
        for inner in processor.get("processors") or []:
            inner_before, inner_after = _post_processor_tokens(inner)
            before, after = inner_before + before, after + inner_after
        return before, after
    return [], []


def _difference(replayed: list[int], expected: list[int]) -> str:
    at = next(
        (i for i, (a, b) in enumerate(zip(replayed, expected, strict=False)) if a != b),
        min(len(replayed), len(expected)),
    )
    return (
        f"the step-by-step replay of this text gives other ids than the tokenizer (from token {at} on), "
        "so this tokenizer uses a feature the replay does not model; tokenize without explain"
    )


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
