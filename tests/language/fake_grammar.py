"""A grammar backend for the scripted engine (scripted_engine.py): choices of letter words, no library.

`FakeBackend` compiles a `choice` constraint of lowercase words into matchers over the letter vocabulary
(token 1 is "a", ..., EOS is 0); any other kind is refused, as a library refuses what it cannot compile.
It counts compiles, and a choice containing "slow" takes `slow_s` seconds, for the compile time limit.
"""

from __future__ import annotations

import time

import torch
from scripted_engine import VOCAB, text_of, tokens

from service.language.grammar import Constraint, GrammarError


class WordsMatcher:
    """The text so far must stay a prefix of one of `words`; it is whole when it is one."""

    def __init__(self, words: tuple[str, ...]) -> None:
        self.words = words
        self.text = ""

    def _extends(self, text: str) -> bool:
        return any(word.startswith(text) for word in self.words)

    def allowed(self) -> torch.Tensor:
        mask = torch.zeros(VOCAB, dtype=torch.bool)
        for word in self.words:
            if word.startswith(self.text) and len(word) > len(self.text):
                mask[tokens(word[len(self.text)])[0]] = True
        return mask

    def consume(self, token_id: int) -> bool:
        if token_id == 0 or not self._extends(self.text + text_of(token_id)):
            return False
        self.text += text_of(token_id)
        return True

    def accepting(self) -> bool:
        return self.text in self.words

    def finished(self) -> bool:
        return not any(word.startswith(self.text) and len(word) > len(self.text) for word in self.words)

    def valid_prefix(self, draft: list[int]) -> int:
        text = self.text
        for count, token_id in enumerate(draft):
            if token_id == 0 or not self._extends(text + text_of(token_id)):
                return count
            text += text_of(token_id)
        return len(draft)


class WordsGrammar:
    def __init__(self, words: tuple[str, ...]) -> None:
        self.words = words

    def new_matcher(self) -> WordsMatcher:
        return WordsMatcher(self.words)


class FakeBackend:
    name = "fake"

    def __init__(self, slow_s: float = 0.0) -> None:
        self.compiles = 0
        self.slow_s = slow_s

    def compile(self, constraint: Constraint) -> WordsGrammar:
        self.compiles += 1
        if constraint.kind != "choice":
            raise GrammarError(f"the fake compiles choices only, not {constraint.kind}")
        words = tuple(constraint.value)
        if "slow" in words:
            time.sleep(self.slow_s)
        return WordsGrammar(words)


def choice(*words: str, field: str = "choice") -> Constraint:
    return Constraint("choice", words, field)
