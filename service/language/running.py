"""The generations in the running batch, and what one engine step does to them.

Row b of the `RunningBatch` (its KV caches) is `rows[b]`. `admit` prefills new prompts together and
appends their rows; `step` advances every row by one token in one batched forward pass, or, while few
plain-greedy rows run, by several: prompt-lookup drafts checked in the same pass, kept while greedy agrees
with them. Each new token is streamed to its request; finished rows are dropped from the batch (`keep`).
A row that asked for `explain` is chosen by its own chooser, which also says how (sampler_explain.py),
drafts or not; the others do no such work. A constrained row (structured output, grammar.py) takes only
what its grammar allows, at every position: its drafts are cut to the start its grammar allows, and each
checked position's greedy choice is the argmax of the masked logits, so its output is what one-token
steps under the grammar would have given; it stops once its grammar is complete. Everything here runs on
the engine thread.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch

from service.language.admission import AdmissionBound
from service.language.batch import RunningBatch
from service.language.events import Candidate, ErrorEvent, FinishEvent, TokenEvent, TokenExplanation
from service.language.model import LanguageModel
from service.language.prompt_lookup import draft_from_context
from service.language.sequence import FinishReason, GenerationState, interruption, stop_reason
from service.language.stats import EngineStats
from service.language.token_choice import (
    alternatives,
    choose_tokens,
    constrained_greedy,
    explained_choice,
    greedy_path,
    logprobs_of,
)


class RunningSequences:
    """The running batch's generations in row order, and the steps that advance and retire them."""

    def __init__(
        self,
        lm: LanguageModel,
        batch: RunningBatch,
        admission: AdmissionBound,
        stats: EngineStats,
        *,
        lookup_tokens: int,
        lookup_max_batch: int,
    ) -> None:
        self.lm = lm
        self.batch = batch
        self.rows: list[GenerationState] = []  # row b of `batch` is rows[b]
        self.lookup_tokens = lookup_tokens if batch.supports_drafts else 0
        self.lookup_max_batch = lookup_max_batch
        self._admission = admission
        self._stats = stats
        # Observers (metrics): called on the engine thread, must be cheap.
        self.step_listeners: list[Callable[[int, float], None]] = []  # (rows, seconds) per decode step
        self.finish_listeners: list[Callable[[FinishEvent], None]] = []
        self.token_listeners: list[
            Callable[[float | None], None]
        ] = []  # seconds since the previous token (None = first)

    def admit(self, sequences: list[GenerationState]) -> None:
        """Prefill new prompts together, append them to the running batch, and take each one's first token."""
        now = time.monotonic()
        live = []
        for seq in sequences:
            seq.admitted_at = now
            reason = interruption(seq.handle.cancelled, seq.deadline, now)
            if reason is not None:
                self.finish(seq, reason)
            else:
                live.append(seq)
        if not live:
            return
        logits = self.batch.prefill([s.prompt_ids for s in live])  # [len(live), vocab]
        self.rows.extend(live)
        self._take_tokens(live, logits)
        self._retire_finished()

    def step(self) -> None:
        """Advance every running row (at least one token each), then drop the rows that finished."""
        started = time.perf_counter()
        rows = self.rows
        drafts = self._drafts(rows)
        if drafts is None:
            self._take_tokens(rows, self.batch.decode([s.generated[-1] for s in rows]))  # logits [rows, vocab]
        else:
            self._take_checked_drafts(rows, drafts)
        self._stats.steps += 1
        self._retire_finished()
        elapsed = time.perf_counter() - started
        self._stats.step_seconds += 0.1 * (elapsed - self._stats.step_seconds)
        for listener in self.step_listeners:
            listener(len(rows), elapsed)

    def retire_interrupted(self) -> None:
        """Finish the rows whose client cancelled or whose deadline passed, and drop them from the batch."""
        now = time.monotonic()
        for seq in self.rows:
            reason = interruption(seq.handle.cancelled, seq.deadline, now) if seq.finish_reason is None else None
            if reason is not None:
                self.finish(seq, reason)
        self._retire_finished()

    def finish(self, seq: GenerationState, reason: FinishReason) -> None:
        """Record why `seq` ended, give back its place, and tell the listeners, then its client."""
        seq.finish_reason = reason
        self._admission.release(seq)
        event = seq.finish_event(reason, time.monotonic())
        self._stats.finished += 1
        for listener in self.finish_listeners:  # before the client hears of it: a scrape right after sees it
            listener(event)
        seq.handle._emit(event)

    def fail(self, message: str, others: Iterable[GenerationState] = ()) -> None:
        """End every running row, and `others` (admitted or queued), with an error; empty the batch."""
        ended = [seq for seq in {id(s): s for s in (*others, *self.rows)}.values() if seq.finish_reason is None]
        self.rows = []
        self.batch.clear()
        for seq in ended:  # after the batch is empty: a client that hears of it sees the engine idle
            self._admission.release(seq)
            seq.handle._emit(ErrorEvent(message))

    # ---- choosing and streaming -----------------------------------------------------------

    def _drafts(self, rows: list[GenerationState]) -> list[list[int]] | None:
        """Prompt-lookup drafts for each row, or None for a plain step (drafting off, a sampled row, a busy batch)."""
        if not self.lookup_tokens or len(rows) > self.lookup_max_batch:
            return None
        if not all(seq.params.is_plain_greedy for seq in rows):
            return None
        drafts = []
        for seq in rows:
            done = len(seq.generated)
            # This step emits up to 1 + len(draft) tokens: stay within max_new_tokens and the context.
            room = min(
                self.lookup_tokens,
                seq.params.max_new_tokens - done - 1,
                self.lm.context_length - len(seq.prompt_ids) - done - 1,
            )
            draft = draft_from_context(seq.context, room)
            drafts.append(seq.grammar.valid_prefix(draft) if seq.grammar is not None else draft)
        return drafts if any(drafts) else None

    def _take_checked_drafts(self, rows: list[GenerationState], drafts: list[list[int]]) -> None:
        """Feed every row its last token plus its drafts in one pass; emit greedy's choice at each position
        while it agrees with the next draft, so the output is what one-token steps would have given."""
        logits = self.batch.decode_drafts(
            [[seq.generated[-1], *draft] for seq, draft in zip(rows, drafts, strict=True)]
        )
        logits = logits[:, :, : self.lm.vocab_size]  # [rows, positions, vocab]
        logprobs, best_ids, best_logprobs = greedy_path(logits)
        now = time.monotonic()
        kept = []
        for row, (seq, draft) in enumerate(zip(rows, drafts, strict=True)):
            emitted = 0
            for position in range(len(draft) + 1):
                token, logprob, explanation = best_ids[row][position], best_logprobs[row][position], None
                if seq.params.explain:  # greedy too, by the row's chooser, after what it has taken so far
                    token, explanation = explained_choice(seq, logits[row, position], seq.context, self.lm.token_text)
                    logprob = float(logprobs[row, position, token])
                elif seq.grammar is not None:  # greedy among what the grammar allows after the tokens taken
                    token = constrained_greedy(seq, logits[row, position])
                    logprob = float(logprobs[row, position, token])
                step_alternatives = alternatives(seq, logprobs[row, position], self.lm.token_text)
                self._append_token(seq, token, logprob, step_alternatives, now, explanation)
                emitted += 1
                if seq.finish_reason is not None or position == len(draft) or token != draft[position]:
                    break
            kept.append(emitted)
            self._stats.draft_tokens += len(draft)
            self._stats.accepted_draft_tokens += emitted - 1
        self.batch.accept(kept)

    def _take_tokens(self, rows: list[GenerationState], logits: torch.Tensor) -> None:
        """Choose one token per row of `logits` [rows, vocab or more], stream it, and mark finished rows."""
        logits = logits[:, : self.lm.vocab_size]
        logprobs = torch.log_softmax(logits, dim=-1)  # [rows, vocab]
        chosen, explained = choose_tokens(logits, rows, self.lm.token_text)
        chosen_logprobs = logprobs_of(logprobs, chosen)
        now = time.monotonic()
        for row, seq in enumerate(rows):
            step_alternatives = alternatives(seq, logprobs[row], self.lm.token_text)
            self._append_token(seq, chosen[row], chosen_logprobs[row], step_alternatives, now, explained[row])

    def _append_token(
        self,
        seq: GenerationState,
        token_id: int,
        logprob: float,
        step_alternatives: list[Candidate] | None,
        now: float,
        explanation: TokenExplanation | None = None,
    ) -> None:
        gap = None if seq.last_token_at is None else now - seq.last_token_at
        if seq.first_token_at is None:
            seq.first_token_at = now
        seq.last_token_at = now
        seq.generated.append(token_id)
        if explanation is not None:
            seq.surprisal_total += explanation.surprisal
        self._stats.generated_tokens += 1
        for listener in self.token_listeners:
            listener(gap)

        if seq.grammar is not None:
            seq.grammar.advance(token_id)
        increment = seq.assembler.push(token_id)
        reason = stop_reason(
            seq.params,
            token_is_eos=token_id in self.lm.eos_token_ids,
            stop_string_seen=seq.assembler.stopped,
            grammar_finished=seq.grammar is not None and seq.grammar.finished,
            generated_tokens=len(seq.generated),
            prompt_tokens=len(seq.prompt_ids),
            context_length=self.lm.context_length,
            deadline=seq.deadline,
            now=now,
        )
        if reason is not None:
            increment += seq.assembler.flush()
        seq.handle._emit(
            TokenEvent(
                index=len(seq.generated) - 1,
                id=token_id,
                token=self.lm.token_text(token_id),
                text=increment,
                probability=math.exp(logprob),
                logprob=logprob,
                special=token_id in self.lm.special_token_ids,
                alternatives=step_alternatives,
                explain=explanation,
            )
        )
        if reason is not None:
            self.finish(seq, reason)

    def _retire_finished(self) -> None:
        keep = [row for row, seq in enumerate(self.rows) if seq.finish_reason is None]
        if len(keep) == len(self.rows):
            return
        self.batch.keep(keep)
        self.rows = [self.rows[row] for row in keep]
