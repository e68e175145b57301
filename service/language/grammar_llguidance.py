"""The grammar backend: llguidance (Microsoft's Rust library behind guidance; vLLM and SGLang use it too).

Why this one: on this 2-core CPU with SmolLM2's 49,152-token vocabulary it computes a step's mask for a
nested JSON schema in tens of microseconds and compiles in milliseconds, takes JSON schemas (objects,
arrays, enums, `$ref`, `anyOf`, patterns, formats, bounds), regular expressions and Lark grammars (so a
choice of strings is one), and installs from PyPI as one CPU wheel with no dependencies (figures and
the comparison with xgrammar and outlines-core: bench/grammar_masks.py, bench/RESULTS.md).

JSON is generated in one line with `", "` and `": "` between items, as `json.dumps` writes it: no free
whitespace, which a small model would otherwise fill with newlines until it runs out of tokens.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

import torch

from service.language.grammar import Constraint, GrammarError
from service.language.model import LanguageModel

log = logging.getLogger("service.grammar")


class LLGuidanceMatcher:
    """One generation's llguidance matcher, writing its bitmask into a preallocated int32 tensor.

    A Rust panic surfaces in Python as a BaseException that would end the engine's thread; here it
    only ends the row: the mask allows nothing (so `GrammarState` lets the row end) and the token is
    refused."""

    def __init__(self, matcher: Any, vocab_size: int, shifts: torch.Tensor) -> None:
        self._matcher = matcher
        self._vocab_size = vocab_size
        self._shifts = shifts  # [32] int32: 0..31
        self._words = torch.zeros((vocab_size + 31) // 32, dtype=torch.int32)

    def allowed(self) -> torch.Tensor:
        try:
            self._matcher.unsafe_compute_mask_ptr(self._words.data_ptr(), self._words.numel() * 4)
        except BaseException as exc:  # a Rust panic is a BaseException
            _reraise_if_fatal(exc)
            log.exception("llguidance failed computing a mask; the row ends")
            return torch.zeros(self._vocab_size, dtype=torch.bool)
        bits = (self._words[:, None] >> self._shifts) & 1  # bit j of word i: token 32 i + j
        return bits.reshape(-1)[: self._vocab_size].bool()

    def consume(self, token_id: int) -> bool:
        try:
            return bool(self._matcher.consume_token(token_id))
        except BaseException as exc:
            _reraise_if_fatal(exc)
            log.exception("llguidance failed taking a token; the row ends")
            return False

    def accepting(self) -> bool:
        return bool(self._matcher.is_accepting())

    def finished(self) -> bool:
        return bool(self._matcher.is_stopped())

    def valid_prefix(self, tokens: list[int]) -> int:
        return int(self._matcher.validate_tokens(tokens)) if tokens else 0


class LLGuidanceGrammar:
    """A compiled grammar: a matcher at its start, which each generation copies."""

    def __init__(self, prototype: Any, vocab_size: int, shifts: torch.Tensor) -> None:
        self._prototype = prototype
        self._vocab_size = vocab_size
        self._shifts = shifts

    def new_matcher(self) -> LLGuidanceMatcher:
        return LLGuidanceMatcher(self._prototype.deep_copy(), self._vocab_size, self._shifts)


class LLGuidanceBackend:
    name = "llguidance"

    def __init__(self, lm: LanguageModel) -> None:
        import llguidance

        backend = getattr(lm.tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise GrammarError(f"structured output needs a fast (Rust) tokenizer; {lm.model_id} has none")
        backend = copy.copy(backend)  # as llguidance.hf does: no padding, no truncation in the copy it reads
        backend.no_padding()
        backend.no_truncation()
        self._ll = llguidance
        self._tokenizer = llguidance.LLTokenizer(
            backend.to_str(), n_vocab=lm.vocab_size, eos_token=sorted(lm.eos_token_ids) or None
        )
        self._vocab_size = lm.vocab_size
        self._shifts = torch.arange(32, dtype=torch.int32)

    def compile(self, constraint: Constraint) -> LLGuidanceGrammar:
        try:
            return self._compile(constraint)
        except GrammarError:
            raise
        except BaseException as exc:  # whatever llguidance raises (a Rust panic included) is its refusal
            _reraise_if_fatal(exc)
            raise GrammarError(_reason(f"{type(exc).__name__}: {exc}")) from exc

    def _compile(self, constraint: Constraint) -> LLGuidanceGrammar:
        matcher_class = self._ll.LLMatcher
        if constraint.kind == "json_schema":
            assert isinstance(constraint.value, str)
            try:
                grammar = matcher_class.grammar_from_json_schema(
                    constraint.value,
                    defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "},
                )
            except ValueError as exc:
                raise GrammarError(str(exc)) from exc
        elif constraint.kind == "regex":
            assert isinstance(constraint.value, str)
            grammar = matcher_class.grammar_from_regex(constraint.value)
        else:
            choices = list(constraint.value)
            grammar = matcher_class.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in choices))
        error = matcher_class.validate_grammar(grammar, self._tokenizer)
        if error:
            raise GrammarError(_reason(error))
        prototype = matcher_class(self._tokenizer, grammar, log_level=0)
        if prototype.is_error():
            raise GrammarError(_reason(prototype.get_error()))
        return LLGuidanceGrammar(prototype, self._vocab_size, self._shifts)


def _reraise_if_fatal(exc: BaseException) -> None:
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        raise exc


def _reason(message: str) -> str:
    """llguidance's message, without its trailing whitespace (one line is what a client needs)."""
    return " ".join(message.split())
