"""The generation engine: one thread owns the model and serves every request by continuous batching.

Why one thread: on a two-core CPU, model calls that hop between threads (FastAPI's threadpool) run a
third slower, and the event loop must never run model code so `/health` stays instant.

The model's forward passes and KV caches sit behind a `RunningBatch` (batch.py): the lean Llama
decoder (llama_decoder.py) for Llama-family models, transformers' forward for any other.

Each loop iteration (a "step"):
  1. answers all waiting next-token-distribution requests with one batched forward pass;
  2. admits waiting generation requests up to the batch limit, prefilling their prompts together
     and appending them to the running batch;
  3. advances every running sequence by one token in one batched forward pass over the batch's
     KV caches (no prompt is ever recomputed); while few greedy sequences run, the same pass also
     checks prompt-lookup draft tokens, and a sequence may advance by several;
  4. streams each new token to its request, and retires finished or cancelled sequences.

Per-row positions and the attention mask make a padded row compute what it would compute alone, so
greedy output in float32 is the same batched or not; each request samples with its own generator,
so seeded sampling, in float32, does not depend on what else shares the batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from service.config import Settings
from service.language.batch import RunningBatch, make_running_batch
from service.language.exceptions import EngineNotReady, EngineOverloaded
from service.language.model import LanguageModel
from service.language.prompt_lookup import draft_from_context
from service.language.detokenize import TextAssembler
from service.language.events import (
    Candidate,
    Distribution,
    ErrorEvent,
    FinishEvent,
    GenerationFailed,
    GenerationHandle,
    TokenEvent,
)
from service.language.sampling import SamplingParams, TokenChooser

log = logging.getLogger("service.engine")
T = TypeVar("T")


def default_torch_threads() -> int:
    """OMP_NUM_THREADS when set (containers set it from their CPU limit); else the CPUs this process may
    run on, capped by a cgroup v2 CPU quota (`docker --cpus`), since affinity alone shows the host's."""
    configured = os.environ.get("OMP_NUM_THREADS", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max", encoding="ascii").read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def estimate_retry_after(remaining_tokens: list[int], step_seconds: float) -> int:
    """Whole seconds (1 to 60) until the running generation nearest its end is done: `Retry-After` for a
    refused request, since that is when the admission bound has room again. With nothing running (the
    bound is full of queued work behind a long prefill), one step's time."""
    nearest = min(remaining_tokens, default=1)
    return max(1, min(60, math.ceil(max(0, nearest) * step_seconds)))


# --------------------------------------------------------------------------------------------
# The engine side: lives on the engine thread


@dataclass
class _Sequence:
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
    finish_reason: str | None = None
    released: bool = False  # its place under the admission bound has been given back


@dataclass
class _DistributionRequest:
    prompt_ids: list[int]
    top_k: int
    temperature: float
    future: concurrent.futures.Future[Distribution]


@dataclass
class EngineStats:
    """Totals `/info` shows; the metrics take finer figures from the listeners."""

    steps: int = 0
    generated_tokens: int = 0
    finished: int = 0
    draft_tokens: int = 0  # proposed by prompt lookup
    accepted_draft_tokens: int = 0  # of those, the ones greedy decoding chose too
    refused: int = 0  # requests answered "overloaded" (429)
    peak_held: int = 0  # the most requests ever held at once (never above the admission bound)
    step_seconds: float = 0.05  # moving average of one decode step's time


class GenerationEngine:
    """Owns the model on one thread and batches every request onto it. Thread-safe `submit` / `next_token_distribution`."""

    def __init__(self, lm: LanguageModel, settings: Settings) -> None:
        self.lm = lm
        self.settings = settings
        self.max_batch = min(settings.max_batch_size, settings.max_running_requests)
        self.max_waiting = settings.max_waiting_requests
        # The admission bound: requests held at once (queued, being prefilled, running, or waiting for a
        # next-token or scoring pass), counted from the moment they are accepted to the moment they end,
        # so a burst cannot slip past it between two steps. Past it a request is refused at once.
        self.max_held = self.max_batch + self.max_waiting
        self._held = 0
        self.stats = EngineStats()
        # Observers (metrics): called on the engine thread, must be cheap.
        self.step_listeners: list[Callable[[int, float], None]] = []
        self.finish_listeners: list[Callable[[FinishEvent], None]] = []
        self.token_listeners: list[Callable[[float | None], None]] = []  # seconds since the previous token (None = first)

        self._cv = threading.Condition()
        self._waiting: deque[_Sequence] = deque()
        self._distributions: deque[_DistributionRequest] = deque()
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = deque()
        self._running: list[_Sequence] = []  # row b of the running batch is self._running[b]
        self._batch: RunningBatch = make_running_batch(lm, self.max_batch, lean=settings.lean_decoder)
        self._lookup_tokens = settings.prompt_lookup_tokens if self._batch.supports_drafts else 0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._accepting = False
        self._dead: str | None = None

    # ---- lifecycle ------------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._accepting and self._dead is None

    @property
    def running_count(self) -> int:
        return len(self._running)

    @property
    def waiting_count(self) -> int:
        return len(self._waiting)

    @property
    def held_count(self) -> int:
        return self._held

    def start(self) -> None:
        """Start the engine's thread, the only one that runs the model, with GENAI_TORCH_THREADS threads.

        Why only one: libgomp cuts its threads' spin-wait short once more OpenMP threads exist than cores, and
        every parallel kernel then pays a sleep-and-wake; a thread that ran torch in parallel before (the one
        that loaded the model, say) leaves its helper threads behind, and a decode step ran 43% slower on this
        2-core machine for it. So the loading thread runs torch single-threaded (`load_models`)."""
        self._accepting = True
        self._thread = threading.Thread(target=self._loop_forever, name="generation-engine", daemon=True)
        self._thread.start()

    def stop_accepting(self) -> None:
        self._accepting = False

    def cancel_all(self) -> None:
        """End every generation held now (shutdown, at the end of its grace): each finishes `cancelled`
        within a step, with what it generated so far."""
        with self._cv:
            handles = [seq.handle for seq in (*self._waiting, *self._running)]
        for handle in handles:
            handle.cancel()

    def shutdown(self, grace_seconds: float = 0.0) -> None:
        """Stop admitting, let in-flight work finish for up to `grace_seconds`, cancel the rest, join the thread."""
        self._accepting = False
        deadline = time.monotonic() + grace_seconds
        while (self._running or self._waiting) and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def describe(self) -> dict[str, Any]:
        return {
            "running": self.running_count,
            "waiting": self.waiting_count,
            "max_batch_size": self.max_batch,
            "max_waiting": self.max_waiting,
            "held": self._held,
            "max_held": self.max_held,
            "peak_held": self.stats.peak_held,
            "refused": self.stats.refused,
            "steps": self.stats.steps,
            "generated_tokens": self.stats.generated_tokens,
            "finished_requests": self.stats.finished,
            "accepting": self._accepting,
            "forward": self._batch.kind,
            "prompt_lookup_tokens": self._lookup_tokens,
            "draft_tokens": self.stats.draft_tokens,
            "accepted_draft_tokens": self.stats.accepted_draft_tokens,
        }

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    # ---- the request side -----------------------------------------------------------------

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> GenerationHandle:
        """Queue a generation. Raises Overloaded when the queue is full (the caller answers 429)."""
        self._check_accepting()
        loop = asyncio.get_running_loop()
        handle = GenerationHandle(loop, self._wake)
        now = time.monotonic()
        timeout = params.timeout_s if params.timeout_s is not None else self.settings.request_timeout_s
        seq = _Sequence(
            handle=handle,
            params=params,
            prompt_ids=list(prompt_ids),
            chooser=TokenChooser.create(params),
            submitted_at=now,
            deadline=now + timeout if timeout else None,
            assembler=TextAssembler(self.lm.tokenizer, self.lm.eos_token_ids, params.stop),
        )
        with self._cv:
            self._hold()
            self._waiting.append(seq)
            self._cv.notify_all()
        return handle

    def _hold(self) -> None:
        """Take a place under the admission bound, or refuse at once (under `_cv`)."""
        if self._held >= self.max_held:
            self.stats.refused += 1
            retry_after = self.retry_after_seconds()
            raise EngineOverloaded(
                f"the server is at capacity ({self._held} requests held: {len(self._running)} running, "
                f"{len(self._waiting)} waiting, limit {self.max_held}); retry in about {retry_after} s",
                retry_after_seconds=retry_after,
            )
        self._held += 1
        self.stats.peak_held = max(self.stats.peak_held, self._held)

    def _unhold(self) -> None:
        with self._cv:
            self._held -= 1

    def _release(self, seq: _Sequence) -> None:
        """Give back a generation's place, once, whichever way it ended."""
        if not seq.released:
            seq.released = True
            self._unhold()

    def retry_after_seconds(self) -> int:
        """When a refused client may find room: a place under the bound frees when the first running
        generation ends, at the latest after its remaining tokens at the recent step time."""
        running = list(self._running)
        # nothing running yet (a burst from idle, its first batch still being prefilled): the first of
        # the queue's head will free a place after its own length
        remaining = [seq.params.max_new_tokens - len(seq.generated) for seq in running] or [
            seq.params.max_new_tokens for seq in list(self._waiting)[: self.max_batch]
        ]
        return estimate_retry_after(remaining, self.stats.step_seconds)

    async def next_token_distribution(self, prompt_ids: list[int], top_k: int, temperature: float = 1.0) -> Distribution:
        """The model's next-token distribution after `prompt_ids`; concurrent calls share one forward pass."""
        self._check_accepting()
        future: concurrent.futures.Future[Distribution] = concurrent.futures.Future()
        with self._cv:
            self._hold()
            self._distributions.append(_DistributionRequest(list(prompt_ids), top_k, temperature, future))
            self._cv.notify_all()
        future.add_done_callback(lambda _: self._unhold())
        return await asyncio.wrap_future(future)

    async def run_on_engine_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run other model work (scoring a prompt, say) on the engine thread between two steps, so that
        the model is only ever used from one thread."""
        self._check_accepting()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._cv:
            self._hold()
            self._calls.append((lambda: fn(*args), future))
            self._cv.notify_all()
        future.add_done_callback(lambda _: self._unhold())
        return await asyncio.wrap_future(future)

    async def next_token_logits(self, prompts: list[list[int]]) -> torch.Tensor:
        """Float32 next-token logits after each prompt, by the forward pass the engine serves with (what
        precision checks compare); one batch, on the engine thread."""
        return await self.run_on_engine_thread(self._batch.last_logits, prompts)

    async def prompt_logprobs(self, ids: list[int], top_n: int) -> list[tuple[float, list[Candidate]]]:
        """For each prompt token after the first: its logprob given the tokens before it, and the `top_n`
        likeliest tokens at that place; by the forward pass the engine serves with, on its thread."""
        return await self.run_on_engine_thread(self._prompt_logprobs, ids, top_n)

    def _prompt_logprobs(self, ids: list[int], top_n: int) -> list[tuple[float, list[Candidate]]]:
        logprobs = torch.log_softmax(self._batch.prompt_logits(ids)[:-1, : self.lm.vocab_size], dim=-1)
        targets = torch.tensor(ids[1:], dtype=torch.long, device=logprobs.device)
        chosen = logprobs.gather(-1, targets[:, None])[:, 0].tolist()
        top = torch.topk(logprobs, top_n) if top_n > 0 else None
        return [
            (lp, self._candidates(top.indices[pos].tolist(), top.values[pos].tolist()) if top is not None else [])
            for pos, lp in enumerate(chosen)
        ]

    def _run_calls(self, calls: list[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]) -> None:
        for call, future in calls:
            if future.cancelled():
                continue
            try:
                future.set_result(call())
            except Exception as exc:  # reported to the caller, not fatal to the engine
                future.set_exception(exc)

    def _check_accepting(self) -> None:
        if self._dead is not None:
            raise EngineNotReady(f"the generation engine stopped: {self._dead}")
        if not self._accepting:
            raise EngineNotReady("the service is shutting down and accepts no new work", retry_after_seconds=5)

    # ---- the engine thread ----------------------------------------------------------------

    def _loop_forever(self) -> None:
        torch.set_num_threads(self.settings.torch_threads or default_torch_threads())
        try:
            with torch.inference_mode():
                while True:
                    with self._cv:
                        while not (self._stopping or self._waiting or self._distributions or self._running or self._calls):
                            self._cv.wait()
                        if self._stopping:
                            break
                        distributions = list(self._distributions)
                        self._distributions.clear()
                        calls = list(self._calls)
                        self._calls.clear()
                        admitted: list[_Sequence] = []
                        while self._waiting and len(self._running) + len(admitted) < self.max_batch:
                            admitted.append(self._waiting.popleft())
                    try:
                        if calls:
                            self._run_calls(calls)
                        if distributions:
                            self._serve_distributions(distributions)
                        self._retire_cancelled_and_expired()
                        if admitted:
                            self._admit(admitted)
                        if self._running:
                            self._decode_step()
                    except Exception as exc:  # a model error must not kill the engine: fail the affected requests
                        log.exception("engine step failed")
                        self._fail_all(admitted, distributions, f"{type(exc).__name__}: {exc}")
        except BaseException as exc:  # pragma: no cover - only on interpreter shutdown
            self._dead = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._drain_on_stop()

    def _drain_on_stop(self) -> None:
        with self._cv:
            leftovers = list(self._waiting)
            self._waiting.clear()
            distributions = list(self._distributions)
            self._distributions.clear()
        for seq in leftovers + self._running:
            self._release(seq)
            seq.handle._emit(ErrorEvent("the service shut down before this generation finished"))
        self._running = []
        self._batch.clear()
        for req in distributions:
            if not req.future.done():
                req.future.set_exception(EngineNotReady("the service is shutting down"))
        for _, future in self._calls:
            if not future.done():
                future.set_exception(EngineNotReady("the service is shutting down"))
        self._calls.clear()

    def _fail_all(self, admitted: list[_Sequence], distributions: list[_DistributionRequest], message: str) -> None:
        for req in distributions:
            if not req.future.done():
                req.future.set_exception(GenerationFailed(message))
        for seq in {id(s): s for s in admitted + self._running}.values():
            if seq.finish_reason is None:
                self._release(seq)
                seq.handle._emit(ErrorEvent(message))
        self._running = []
        self._batch.clear()

    # ---- forward passes -------------------------------------------------------------------

    def _serve_distributions(self, requests: list[_DistributionRequest]) -> None:
        live = [r for r in requests if not r.future.cancelled()]
        # Bound the padded batch so one long prompt does not make many short ones expensive.
        live.sort(key=lambda r: len(r.prompt_ids))
        chunk: list[_DistributionRequest] = []
        for req in live:
            if chunk and (len(chunk) + 1) * len(req.prompt_ids) > 8192:
                self._distribution_batch(chunk)
                chunk = []
            chunk.append(req)
        if chunk:
            self._distribution_batch(chunk)

    def _distribution_batch(self, requests: list[_DistributionRequest]) -> None:
        logits = self._batch.last_logits([r.prompt_ids for r in requests])
        for row, req in enumerate(requests):
            row_logits = logits[row, : self.lm.vocab_size]
            # Shift before dividing and keep the result finite: a tiny temperature then tends to the greedy
            # limit (probability 1 for the top token) instead of overflowing to inf - inf = NaN.
            temperature = max(req.temperature, torch.finfo(torch.float32).tiny)  # 5e-324 is 0 in float32
            scaled = ((row_logits - row_logits.max()) / temperature).clamp(min=torch.finfo(torch.float32).min)
            logprobs = torch.log_softmax(scaled, dim=-1)
            top = torch.topk(logprobs, req.top_k)
            candidates = self._candidates(top.indices.tolist(), top.values.tolist())
            if not req.future.done():
                req.future.set_result(Distribution(candidates=candidates, prompt_tokens=len(req.prompt_ids)))

    def _alternatives(self, seq: _Sequence, logprobs: torch.Tensor) -> list[Candidate] | None:
        """The step's likeliest tokens, when the request asked for them (`top_alternatives`)."""
        if not seq.params.top_alternatives:
            return None
        top = torch.topk(logprobs, seq.params.top_alternatives)
        return self._candidates(top.indices.tolist(), top.values.tolist())

    def _candidates(self, ids: list[int], logprobs: list[float]) -> list[Candidate]:
        return [
            Candidate(id=i, token=self.lm.token_text(i), probability=math.exp(lp), logprob=lp)
            for i, lp in zip(ids, logprobs)
        ]

    def _admit(self, sequences: list[_Sequence]) -> None:
        """Prefill new prompts together, append them to the running batch, and take each one's first token."""
        now = time.monotonic()
        live = []
        for seq in sequences:
            seq.admitted_at = now
            if seq.handle.cancelled:
                self._finish(seq, "cancelled")
            elif seq.deadline is not None and now >= seq.deadline:
                self._finish(seq, "time_limit")  # no token yet: the router answers 504
            else:
                live.append(seq)
        if not live:
            return
        logits = self._batch.prefill([s.prompt_ids for s in live])
        self._running.extend(live)
        self._take_tokens(live, logits)
        self._retire_finished()

    def _decode_step(self) -> None:
        started = time.perf_counter()
        batch = self._running
        drafts = self._drafts(batch)
        if drafts is None:
            logits = self._batch.decode([s.generated[-1] for s in batch])
            self._take_tokens(batch, logits)
        else:
            self._take_checked_drafts(batch, drafts)
        self.stats.steps += 1
        self._retire_finished()
        elapsed = time.perf_counter() - started
        self.stats.step_seconds += 0.1 * (elapsed - self.stats.step_seconds)
        for listener in self.step_listeners:
            listener(len(batch), elapsed)

    def _drafts(self, batch: list[_Sequence]) -> list[list[int]] | None:
        """Prompt-lookup drafts for each row, or None for a plain step (drafting off, a sampled row, a busy batch)."""
        if not self._lookup_tokens or len(batch) > self.settings.prompt_lookup_max_batch:
            return None
        if not all(seq.params.is_plain_greedy for seq in batch):
            return None
        drafts = []
        for seq in batch:
            done = len(seq.generated)
            # This step emits up to 1 + len(draft) tokens: stay within max_new_tokens and the context.
            room = min(self._lookup_tokens, seq.params.max_new_tokens - done - 1, self.lm.context_length - len(seq.prompt_ids) - done - 1)
            drafts.append(draft_from_context(seq.prompt_ids + seq.generated, room))
        return drafts if any(drafts) else None

    def _take_checked_drafts(self, batch: list[_Sequence], drafts: list[list[int]]) -> None:
        """Feed every row its last token plus its drafts in one pass; emit greedy's choice at each position
        while it agrees with the next draft, so the output is what one-token steps would have given."""
        logits = self._batch.decode_drafts([[seq.generated[-1], *draft] for seq, draft in zip(batch, drafts)])
        logits = logits[:, :, : self.lm.vocab_size]
        logprobs = torch.log_softmax(logits, dim=-1)
        best = logits.argmax(dim=-1)  # [rows, positions]
        best_logprobs = logprobs.gather(-1, best[..., None])[..., 0].tolist()
        best_ids = best.tolist()
        now = time.monotonic()
        kept = []
        for row, (seq, draft) in enumerate(zip(batch, drafts)):
            emitted = 0
            for position in range(len(draft) + 1):
                token = best_ids[row][position]
                alternatives = self._alternatives(seq, logprobs[row, position])
                self._append_token(seq, token, best_logprobs[row][position], alternatives, now)
                emitted += 1
                if seq.finish_reason is not None or position == len(draft) or token != draft[position]:
                    break
            kept.append(emitted)
            self.stats.draft_tokens += len(draft)
            self.stats.accepted_draft_tokens += emitted - 1
        self._batch.accept(kept)

    # ---- choosing, streaming and retiring -------------------------------------------------

    def _take_tokens(self, batch: list[_Sequence], logits: torch.Tensor) -> list[_Sequence]:
        """Choose one token per row, stream it, and mark finished rows. Returns the rows that finished."""
        logits = logits[:, : self.lm.vocab_size]
        logprobs = torch.log_softmax(logits, dim=-1)
        greedy_rows = [row for row, s in enumerate(batch) if s.params.is_plain_greedy]
        chosen: list[int] = [0] * len(batch)
        if greedy_rows:
            argmax = torch.argmax(logits[greedy_rows], dim=-1).tolist()
            for row, token in zip(greedy_rows, argmax):
                chosen[row] = token
        for row, seq in enumerate(batch):
            if not seq.params.is_plain_greedy:
                chosen[row] = seq.chooser.choose(logits[row], seq.prompt_ids + seq.generated)
        chosen_logprobs = logprobs.gather(-1, torch.tensor(chosen, device=logprobs.device)[:, None])[:, 0].tolist()
        finished = []
        now = time.monotonic()
        for row, seq in enumerate(batch):
            self._append_token(seq, chosen[row], chosen_logprobs[row], self._alternatives(seq, logprobs[row]), now)
            if seq.finish_reason is not None:
                finished.append(seq)
        return finished

    def _append_token(self, seq: _Sequence, token_id: int, logprob: float, alternatives: list[Candidate] | None, now: float) -> None:
        gap = None if seq.last_token_at is None else now - seq.last_token_at
        if seq.first_token_at is None:
            seq.first_token_at = now
        seq.last_token_at = now
        seq.generated.append(token_id)
        self.stats.generated_tokens += 1
        for listener in self.token_listeners:
            listener(gap)

        is_eos = token_id in self.lm.eos_token_ids
        increment = seq.assembler.push(token_id)
        reason = None
        if is_eos and not seq.params.ignore_eos:
            reason = "eos"
        elif seq.assembler.stopped:
            reason = "stop"
        elif len(seq.generated) >= seq.params.max_new_tokens:
            reason = "length"
        elif len(seq.prompt_ids) + len(seq.generated) >= self.lm.context_length:
            reason = "length"
        elif seq.deadline is not None and now >= seq.deadline:
            reason = "time_limit"
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
                alternatives=alternatives,
            )
        )
        if reason is not None:
            self._finish(seq, reason)

    def _finish(self, seq: _Sequence, reason: str) -> None:
        seq.finish_reason = reason
        now = time.monotonic()
        self._release(seq)
        event = FinishEvent(
            finish_reason=reason,
            text=seq.assembler.text,
            ids=list(seq.generated),
            prompt_tokens=len(seq.prompt_ids),
            completion_tokens=len(seq.generated),
            queue_seconds=max(0.0, (seq.admitted_at or now) - seq.submitted_at),
            time_to_first_token_seconds=(seq.first_token_at - seq.submitted_at) if seq.first_token_at else None,
            total_seconds=now - seq.submitted_at,
        )
        self.stats.finished += 1
        for listener in self.finish_listeners:  # before the client hears of it: a scrape right after sees it
            listener(event)
        seq.handle._emit(event)

    def _retire_cancelled_and_expired(self) -> None:
        now = time.monotonic()
        changed = False
        for seq in self._running:
            if seq.finish_reason is None and seq.handle.cancelled:
                self._finish(seq, "cancelled")
                changed = True
            elif seq.finish_reason is None and seq.deadline is not None and now >= seq.deadline:
                self._finish(seq, "time_limit")
                changed = True
        with self._cv:
            expired = [s for s in self._waiting if s.handle.cancelled or (s.deadline is not None and now >= s.deadline)]
            for seq in expired:
                self._waiting.remove(seq)
        for seq in expired:
            self._finish(seq, "cancelled" if seq.handle.cancelled else "time_limit")
        if changed:
            self._retire_finished()

    def _retire_finished(self) -> None:
        keep = [row for row, seq in enumerate(self._running) if seq.finish_reason is None]
        if len(keep) == len(self._running):
            return
        self._batch.keep(keep)
        self._running = [self._running[row] for row in keep]
