"""One generation's state on the engine thread, and the rules for why it ends.

A `GenerationState` lives from `submit` until its finish (or error) event: queued, then a row of the
running batch. Why it ends is decided by two pure functions, so the rules can be tested without a model:
`stop_reason` after each new token (eos, a stop string, a finished grammar, max_new_tokens, the context,
the deadline), and `interruption` between steps (the client cancelled, or the deadline passed before a
token came).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from service.language.detokenize import TextAssembler
from service.language.events import FinishEvent, GenerationHandle
from service.language.grammar import CompiledGrammar, GrammarState
from service.language.sampling import SamplingParams, TokenChooser

FinishReason = Literal["eos", "stop", "length", "time_limit", "cancelled"]


@dataclass
class GenerationState:
    handle: GenerationHandle
    params: SamplingParams
    prompt_ids: list[int]
    chooser: TokenChooser
    submitted_at: float
    deadline: float | None
    assembler: TextAssembler
    generated: list[int] = field(default_factory=list)
    admitted_at: float = 0.0
    first_token_at: float | None = None
    last_token_at: float | None = None
    finish_reason: FinishReason | None = None
    released: bool = False  # its place under the admission bound has been given back
    surprisal_total: float = 0.0  # of the generated tokens under the model, when explained (perplexity)
    grammar: GrammarState | None = None  # structured output: the row's grammar (its `params.constraint`)

    @classmethod
    def start(
        cls,
        handle: GenerationHandle,
        prompt_ids: list[int],
        params: SamplingParams,
        tokenizer: Any,
        eos_token_ids: frozenset[int],
        timeout_s: float | None,
        grammar: CompiledGrammar | None = None,
    ) -> GenerationState:
        """A generation submitted now, to end by `timeout_s` (None or 0: no limit); a constrained one
        (`params.constraint`) with its compiled `grammar`, and only that one."""
        if (grammar is None) != (params.constraint is None):
            raise ValueError("a constrained generation needs its compiled grammar, and only it one")
        now = time.monotonic()
        return cls(
            handle=handle,
            params=params,
            prompt_ids=prompt_ids,
            chooser=TokenChooser.create(params),
            submitted_at=now,
            deadline=now + timeout_s if timeout_s else None,
            assembler=TextAssembler(tokenizer, eos_token_ids, params.stop),
            grammar=GrammarState(grammar.new_matcher(), eos_token_ids, ignore_eos=params.ignore_eos)
            if grammar is not None
            else None,
        )

    @property
    def context(self) -> list[int]:
        """Every token the model has seen or will see next: the prompt, then what was generated."""
        return self.prompt_ids + self.generated

    @property
    def remaining_tokens(self) -> int:
        return self.params.max_new_tokens - len(self.generated)

    def finish_event(self, reason: FinishReason, now: float) -> FinishEvent:
        return FinishEvent(
            finish_reason=reason,
            text=self.assembler.text,
            ids=list(self.generated),
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=len(self.generated),
            queue_seconds=max(0.0, (self.admitted_at or now) - self.submitted_at),
            time_to_first_token_seconds=(self.first_token_at - self.submitted_at) if self.first_token_at else None,
            total_seconds=now - self.submitted_at,
            perplexity=self.perplexity,
        )

    @property
    def perplexity(self) -> float | None:
        """exp of the mean surprisal of the generated tokens, when explained and there are any."""
        if not self.params.explain or not self.generated:
            return None
        return math.exp(self.surprisal_total / len(self.generated))


def stop_reason(
    params: SamplingParams,
    *,
    token_is_eos: bool,
    stop_string_seen: bool,
    grammar_finished: bool = False,
    generated_tokens: int,
    prompt_tokens: int,
    context_length: int,
    deadline: float | None,
    now: float,
) -> FinishReason | None:
    """Why a generation ends with the token it just took (counted in `generated_tokens`), or None to go on.

    In this order: the end-of-sequence token (unless `ignore_eos`), a stop string in the text or a grammar
    that takes no more tokens (both `stop`: for a constraint, the text is whole), the requested length, the
    model's context (both `length`), and the request's deadline."""
    if token_is_eos and not params.ignore_eos:
        return "eos"
    if stop_string_seen or grammar_finished:
        return "stop"
    if generated_tokens >= params.max_new_tokens:
        return "length"
    if prompt_tokens + generated_tokens >= context_length:
        return "length"
    if deadline is not None and now >= deadline:
        return "time_limit"
    return None


def interruption(cancelled: bool, deadline: float | None, now: float) -> FinishReason | None:
    """Why a generation ends between two steps, whatever its tokens: its client cancelled it, or its
    deadline passed (before its first token, that is a `time_limit` with no text: the router answers 504)."""
    if cancelled:
        return "cancelled"
    if deadline is not None and now >= deadline:
        return "time_limit"
    return None
