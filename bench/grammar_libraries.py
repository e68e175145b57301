"""The three grammar libraries bench/grammar_masks.py compares, each behind the same four calls: compile a
JSON schema, a regex or a choice for SmolLM2's tokenizer, and walk a matcher through a document's tokens,
timing each step's token mask. A library that is not installed raises ImportError when constructed."""

from __future__ import annotations

import json
import time
from typing import Any


class Library:
    """One library behind four calls: compile a JSON schema / regex / choice, and walk a matcher."""

    name = ""

    def json_schema(self, schema: dict[str, Any]) -> Any:
        raise NotImplementedError

    def regex(self, pattern: str) -> Any:
        raise NotImplementedError

    def choice(self, choices: list[str]) -> Any:
        raise NotImplementedError

    def walk(self, compiled: Any, tokens: list[int]) -> list[float]:
        """Seconds each step's mask took while feeding `tokens`."""
        raise NotImplementedError


class LLGuidance(Library):
    name = "llguidance"

    def __init__(self, tokenizer: Any, vocab: int) -> None:
        import llguidance
        import torch

        self.ll, self.torch = llguidance, torch
        backend = tokenizer.backend_tokenizer
        self.tokenizer = llguidance.LLTokenizer(backend.to_str(), n_vocab=vocab, eos_token=tokenizer.eos_token_id)
        self.words = (vocab + 31) // 32

    def _matcher(self, grammar: str) -> Any:
        error = self.ll.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            raise ValueError(error)
        return self.ll.LLMatcher(self.tokenizer, grammar, log_level=0)

    def json_schema(self, schema: dict[str, Any]) -> Any:
        grammar = self.ll.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
        )
        return self._matcher(grammar)

    def regex(self, pattern: str) -> Any:
        return self._matcher(self.ll.LLMatcher.grammar_from_regex(pattern))

    def choice(self, choices: list[str]) -> Any:
        return self._matcher(self.ll.grammar_from("choice", json.dumps(choices)))

    def walk(self, compiled: Any, tokens: list[int]) -> list[float]:
        matcher = compiled.deep_copy()
        mask = self.torch.zeros(self.words, dtype=self.torch.int32)
        times = []
        for token in tokens:
            started = time.perf_counter()
            matcher.unsafe_compute_mask_ptr(mask.data_ptr(), self.words * 4)
            times.append(time.perf_counter() - started)
            assert matcher.consume_token(token), matcher.get_error()
        return times


class XGrammar(Library):
    name = "xgrammar"

    def __init__(self, tokenizer: Any, vocab: int) -> None:
        import xgrammar

        self.xgr = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.vocab = vocab

    def json_schema(self, schema: dict[str, Any]) -> Any:
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(", ", ": "))

    def regex(self, pattern: str) -> Any:
        return self.compiler.compile_regex(pattern)

    def choice(self, choices: list[str]) -> Any:
        return self.compiler.compile_grammar("root ::= " + " | ".join(json.dumps(c) for c in choices))

    def walk(self, compiled: Any, tokens: list[int]) -> list[float]:
        matcher = self.xgr.GrammarMatcher(compiled)
        mask = self.xgr.allocate_token_bitmask(1, self.vocab)
        times = []
        for token in tokens:
            started = time.perf_counter()
            matcher.fill_next_token_bitmask(mask)
            times.append(time.perf_counter() - started)
            assert matcher.accept_token(token)
        return times


class OutlinesCore(Library):
    name = "outlines-core"

    def __init__(self, tokenizer: Any, vocab: int) -> None:
        import outlines_core
        import torch

        self.oc, self.torch = outlines_core, torch
        decoder = {v: k for k, v in _bytes_to_unicode().items()}
        eos = tokenizer.eos_token_id
        special = set(tokenizer.all_special_ids)
        tokens: dict[bytes, list[int]] = {}
        for piece, token_id in tokenizer.get_vocab().items():
            if token_id < vocab and token_id not in special:
                tokens.setdefault(bytes(decoder[ch] for ch in piece), []).append(token_id)
        self.vocabulary = outlines_core.Vocabulary(eos, tokens)
        self.words = (vocab + 31) // 32

    def json_schema(self, schema: dict[str, Any]) -> Any:
        return self.regex(self.oc.json_schema.build_regex_from_schema(json.dumps(schema), r"[ ]?"))

    def regex(self, pattern: str) -> Any:
        return self.oc.Index(pattern, self.vocabulary)

    def choice(self, choices: list[str]) -> Any:
        import re

        return self.regex("|".join(re.escape(c) for c in choices))

    def walk(self, compiled: Any, tokens: list[int]) -> list[float]:
        guide = self.oc.Guide(compiled)
        mask = self.torch.zeros(self.words, dtype=self.torch.int32)
        times = []
        for token in tokens:
            started = time.perf_counter()
            guide.write_mask_into(mask.data_ptr(), self.words, 4)
            times.append(time.perf_counter() - started)
            guide.advance(token, return_tokens=False)
        return times


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as the printable character its tokenizer spells it with."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))
