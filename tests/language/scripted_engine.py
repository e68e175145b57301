"""A generation engine over a scripted `RunningBatch`, with no real model (fast, deterministic).

`ScriptedBatch` implements the `RunningBatch` protocol: after any context (the prompt and the tokens fed
since) it returns logits whose argmax (within the vocabulary) is `script(context)`, random elsewhere, with
padding columns past the vocabulary scored highest of all, as an embedding matrix's spare rows might be.
It checks that the engine feeds one token per row it holds, records `keep` calls, and can hold the engine at any
forward pass (`pause` / `allow` / `resume`) so a test decides what the engine has done when it looks.
The `make_engine` fixture (conftest.py) starts engines over it and shuts them down after the test.
"""

from __future__ import annotations

import asyncio
import threading
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from service.config import Settings
from service.language.engine import GenerationEngine
from service.language.events import FinishEvent, GenerationHandle, TokenEvent

EOS = 0
LETTERS = "abcdefghijklmnopqrstuvwxyz"  # token 1 is "a", ..., token 26 is "z"
VOCAB = 1 + len(LETTERS)
PADDING_COLUMNS = 5  # logits are wider than the vocabulary; the engine must never choose these
Script = Callable[[list[int]], int]


def tokens(text: str) -> list[int]:
    return [1 + LETTERS.index(ch) for ch in text]


def text_of(token_id: int) -> str:
    return "<eos>" if token_id == EOS else LETTERS[token_id - 1]


class LetterTokenizer:
    """What `TextAssembler` needs of a tokenizer: `decode`."""

    pad_token_id = EOS

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(text_of(i) for i in ids if not (skip_special_tokens and i == EOS))


@dataclass
class LetterModel:
    """The few attributes of a `LanguageModel` the engine uses."""

    context_length: int = 64
    vocab_size: int = VOCAB
    eos_token_ids: frozenset[int] = frozenset({EOS})
    special_token_ids: frozenset[int] = frozenset({EOS})
    tokenizer: LetterTokenizer = field(default_factory=LetterTokenizer)

    def token_text(self, token_id: int) -> str:
        return text_of(token_id)


def counting(context: list[int]) -> int:
    """A prompt-dependent path that never ends: different prompts give different continuations."""
    return 1 + (sum(context) * 7 + len(context)) % len(LETTERS)


def scripted_logits(context: list[int], script: Script) -> torch.Tensor:
    """Float32 [VOCAB + PADDING_COLUMNS]: random, the scripted token on top within the vocabulary."""
    generator = torch.Generator().manual_seed(zlib.crc32(bytes(context)))
    row = torch.randn(VOCAB + PADDING_COLUMNS, generator=generator)
    row[script(context)] = row[:VOCAB].max() + 1.0
    row[VOCAB:] = 1000.0
    return row


def greedy_continuation(prompt: list[int], n: int, script: Script) -> list[int]:
    context, out = list(prompt), []
    for _ in range(n):
        out.append(script(context))
        context.append(out[-1])
    return out


class ScriptedBatch:
    """A `RunningBatch` whose forward passes follow `script`; see the module docstring."""

    kind = "scripted"

    def __init__(self, script: Script = counting, supports_drafts: bool = False, greedy_feeds: bool = True) -> None:
        self.script = script
        self.supports_drafts = supports_drafts
        self.greedy_feeds = greedy_feeds  # False: a grammar may have overruled the argmax a drafting row was fed
        self.rows: list[list[int]] = []  # each row's context: its prompt, then every token fed to it
        self.prefilled: list[list[int]] = []
        self.keep_calls: list[list[int]] = []
        self.forward_passes = 0
        self.waiting_for_turn = 0  # forward passes now held by `pause`
        self._pending: list[list[int]] | None = None  # fed by decode_drafts, not yet accepted
        self._turns = threading.Condition()
        self._budget: int | None = None  # forward passes allowed before pausing; None = no limit

    # ---- holding the engine at a forward pass ----

    def pause(self) -> None:
        with self._turns:
            self._budget = 0

    def allow(self, passes: int) -> None:
        with self._turns:
            self._budget = (self._budget or 0) + passes
            self._turns.notify_all()

    def resume(self) -> None:
        with self._turns:
            self._budget = None
            self._turns.notify_all()

    def _take_turn(self) -> None:
        with self._turns:
            self.waiting_for_turn += 1
            allowed = self._turns.wait_for(lambda: self._budget is None or self._budget > 0, timeout=10)
            self.waiting_for_turn -= 1
            assert allowed, "a paused forward pass was never allowed"
            if self._budget is not None:
                self._budget -= 1
            self.forward_passes += 1

    def _logits(self, contexts: list[list[int]]) -> torch.Tensor:
        return torch.stack([scripted_logits(c, self.script) for c in contexts])  # [len(contexts), VOCAB + padding]

    # ---- the RunningBatch protocol ----

    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        self._take_turn()
        self.prefilled.extend(list(p) for p in prompts)
        self.rows.extend(list(p) for p in prompts)
        return self._logits(prompts)

    def decode(self, tokens: list[int]) -> torch.Tensor:
        self._take_turn()
        assert len(tokens) == len(self.rows), "one token per running row"
        for row, token in zip(self.rows, tokens, strict=True):
            row.append(token)
        return self._logits(self.rows)

    def keep(self, rows: list[int]) -> None:
        assert rows == sorted(set(rows)) and all(0 <= r < len(self.rows) for r in rows)
        self.keep_calls.append(list(rows))
        self.rows = [self.rows[r] for r in rows]

    def clear(self) -> None:
        self.rows = []

    def last_logits(self, prompts: list[list[int]]) -> torch.Tensor:
        self._take_turn()
        return self._logits(prompts)

    def prompt_logits(self, ids: list[int]) -> torch.Tensor:
        self._take_turn()
        return self._logits([ids[: p + 1] for p in range(len(ids))])  # [len(ids), VOCAB + padding]

    def decode_drafts(self, inputs: list[list[int]]) -> torch.Tensor:
        self._take_turn()
        assert self.supports_drafts and len(inputs) == len(self.rows) and self._pending is None
        longest = max(len(fed) for fed in inputs)
        out = torch.zeros(len(inputs), longest, VOCAB + PADDING_COLUMNS)
        for r, (row, fed) in enumerate(zip(self.rows, inputs, strict=True)):
            assert fed[0] == self.script(row) or not self.greedy_feeds, "drafting rows are greedy: fed the argmax"
            out[r, : len(fed)] = self._logits([row + fed[: p + 1] for p in range(len(fed))])
        self._pending = inputs
        return out  # [rows, longest, VOCAB + padding]

    def accept(self, kept: list[int]) -> None:
        assert self._pending is not None and len(kept) == len(self._pending)
        for row, fed, n in zip(self.rows, self._pending, kept, strict=True):
            assert 1 <= n <= len(fed)
            row.extend(fed[:n])
        self._pending = None


MakeEngine = Callable[..., tuple[GenerationEngine, "ScriptedBatch"]]  # the `make_engine` fixture


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "max_batch_size": 4,
        "max_running_requests": 4,
        "max_waiting_requests": 4,
        "prompt_lookup_tokens": 0,
        "torch_threads": 1,
        "request_timeout_s": 60.0,
    }
    return Settings(**{**values, **overrides})


async def finished(handle: GenerationHandle) -> tuple[list[TokenEvent], FinishEvent]:
    return await asyncio.wait_for(handle.result(), timeout=10)


async def next_events(stream: AsyncIterator[Any], n: int) -> list[Any]:
    return [await asyncio.wait_for(anext(stream), timeout=10) for _ in range(n)]


async def until_true(condition: Callable[[], bool]) -> None:
    """Wait (briefly) for the engine thread to reach a state."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the engine never got there")


async def hold_engine(engine: GenerationEngine, batch: ScriptedBatch) -> asyncio.Future[Any]:
    """Pause the batch and park the engine thread in a forward pass (a next-token distribution), so that
    what is submitted next is all admitted together, in submission order, once the batch resumes."""
    batch.pause()
    parked = asyncio.ensure_future(engine.next_token_distribution(tokens("park"), top_k=1))
    await until_true(lambda: batch.waiting_for_turn == 1)
    return parked
