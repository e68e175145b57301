"""The generation engine: one thread owns the model and serves every request by continuous batching.

Why one thread: on a two-core CPU, model calls that hop between threads (FastAPI's threadpool) run a
third slower, and the event loop must never run model code so `/health` stays instant.

This module is the lifecycle and the thread plumbing: the request side (thread-safe queues the event
loop fills, under the admission bound of admission.py) and the loop on the engine thread that empties
them. Each loop iteration (a "step"):
  1. runs queued engine-thread calls, answers all waiting next-token-distribution requests in batched
     forward passes (distributions.py), and runs one bounded pass of queued embedding inputs (embeddings.py);
  2. finishes cancelled or expired generations, queued or running (sequence.py says why one ends);
  3. admits waiting generations up to the batch limit, prefilling their prompts together;
  4. advances every running sequence by one token, or several by checked prompt-lookup drafts, over
     the batch's KV caches, streams each token, and retires finished rows (running.py, token_choice.py).

The forward passes sit behind a `RunningBatch` (batch.py). Per-row positions and the attention mask make
a padded row compute what it would compute alone, so greedy output in float32 is the same batched or
not; each request samples with its own generator, so seeded sampling, in float32, does not depend on
what else shares the batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from service.config import Settings
from service.language import token_choice
from service.language.admission import AdmissionBound, estimate_retry_after, tokens_until_a_place_frees
from service.language.batch import RunningBatch, make_running_batch
from service.language.distributions import DistributionRequest, fail_distributions, serve_distributions
from service.language.embeddings import Embedder, EmbeddingJob, EmbeddingQueue, fail_embeddings
from service.language.events import Candidate, Distribution, FinishEvent, GenerationFailed, GenerationHandle
from service.language.exceptions import EngineNotReady
from service.language.grammar import CompiledGrammar, GrammarBackend, Grammars
from service.language.grammar_llguidance import LLGuidanceBackend
from service.language.model import LanguageModel
from service.language.running import RunningSequences
from service.language.sampling import SamplingParams
from service.language.sequence import FinishReason, GenerationState, interruption
from service.language.stats import EngineStats

log = logging.getLogger("service.engine")
T = TypeVar("T")


def engine_threads(settings: Settings) -> int:
    """The threads the engine's thread runs torch with: GENAI_TORCH_THREADS, else `default_torch_threads`."""
    return settings.torch_threads or default_torch_threads()


def default_torch_threads() -> int:
    """OMP_NUM_THREADS when set (containers set it from their CPU limit); else the CPUs this process may
    run on, capped by a cgroup v2 CPU quota (`docker --cpus`), since affinity alone shows the host's."""
    configured = os.environ.get("OMP_NUM_THREADS", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as cpu_max:
            quota, period = cpu_max.read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


_Call = tuple[Callable[[], Any], concurrent.futures.Future[Any]]  # (work, where its result goes)


class GenerationEngine:
    """Owns the model on one thread and batches every request onto it. Thread-safe `submit` / `next_token_distribution`.

    `batch` replaces the forward passes `make_running_batch` would choose (tests pass a scripted one), and
    `grammar_backend` the grammar library (grammar.py; tests pass a fake)."""

    def __init__(
        self,
        lm: LanguageModel,
        settings: Settings,
        batch: RunningBatch | None = None,
        grammar_backend: Callable[[], GrammarBackend] | None = None,
    ) -> None:
        self.lm = lm
        self.settings = settings
        self.max_batch = min(settings.max_batch_size, settings.max_running_requests)
        self.max_waiting = settings.max_waiting_requests
        self.stats = EngineStats()
        self._admission = AdmissionBound(self.max_batch + self.max_waiting, self.stats)
        self._batch: RunningBatch = (
            batch if batch is not None else make_running_batch(lm, self.max_batch, lean=settings.lean_decoder)
        )
        self._sequences = RunningSequences(
            lm,
            self._batch,
            self._admission,
            self.stats,
            lookup_tokens=settings.prompt_lookup_tokens,
            lookup_max_batch=settings.prompt_lookup_max_batch,
        )

        self._embedder = Embedder(lm, settings.embedding_pooling, lean=settings.lean_decoder)
        self.grammars = Grammars(grammar_backend or (lambda: LLGuidanceBackend(lm)), settings.grammar_compile_timeout_s)
        self._cv = threading.Condition()  # guards the four queues below and `_stopping`
        self._waiting: deque[GenerationState] = deque()
        self._distributions: deque[DistributionRequest] = deque()
        self._embeddings = EmbeddingQueue()
        self._calls: deque[_Call] = deque()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._accepting = False
        self._dead: str | None = None

    # ---- lifecycle ------------------------------------------------------------------------

    @property
    def max_held(self) -> int:
        """The admission bound: requests held at once (queued, being prefilled, running, or waiting for a
        next-token or scoring pass); past it a request is refused at once."""
        return self._admission.limit

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._accepting and self._dead is None

    @property
    def running_count(self) -> int:
        return len(self._sequences.rows)

    @property
    def waiting_count(self) -> int:
        return len(self._waiting)

    @property
    def held_count(self) -> int:
        return self._admission.held

    @property
    def step_listeners(self) -> list[Callable[[int, float], None]]:
        """Called on the engine thread after each decode step with (rows, seconds); must be cheap."""
        return self._sequences.step_listeners

    @property
    def finish_listeners(self) -> list[Callable[[FinishEvent], None]]:
        """Called on the engine thread with each finish event, before its client hears of it."""
        return self._sequences.finish_listeners

    @property
    def token_listeners(self) -> list[Callable[[float | None], None]]:
        """Called on the engine thread per generated token with the seconds since the previous one (None = first)."""
        return self._sequences.token_listeners

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
            handles = [seq.handle for seq in (*self._waiting, *self._sequences.rows)]
        for handle in handles:
            handle.cancel()

    def shutdown(self) -> None:
        """Stop admitting and join the thread; generations still held end with an error event. (The app
        waits its grace period, and calls `cancel_all`, before this.)"""
        self._accepting = False
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.grammars.close()

    def describe(self) -> dict[str, Any]:
        return {
            "running": self.running_count,
            "waiting": self.waiting_count,
            "max_batch_size": self.max_batch,
            "max_waiting": self.max_waiting,
            "held": self.held_count,
            "max_held": self.max_held,
            "peak_held": self.stats.peak_held,
            "refused": self.stats.refused,
            "steps": self.stats.steps,
            "generated_tokens": self.stats.generated_tokens,
            "finished_requests": self.stats.finished,
            "accepting": self._accepting,
            "forward": self._batch.kind,
            "prompt_lookup_tokens": self._sequences.lookup_tokens,
            "draft_tokens": self.stats.draft_tokens,
            "accepted_draft_tokens": self.stats.accepted_draft_tokens,
        }

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    # ---- the request side -----------------------------------------------------------------

    def submit(
        self, prompt_ids: list[int], params: SamplingParams, grammar: CompiledGrammar | None = None
    ) -> GenerationHandle:
        """Queue a generation (a constrained one with its `params.constraint` compiled: `grammars.compile`).
        Raises EngineOverloaded when the admission bound is full (the caller answers 429)."""
        self._check_accepting()
        handle = GenerationHandle(asyncio.get_running_loop(), self._wake)
        timeout = params.timeout_s if params.timeout_s is not None else self.settings.request_timeout_s
        seq = GenerationState.start(
            handle, list(prompt_ids), params, self.lm.tokenizer, self.lm.eos_token_ids, timeout, grammar
        )
        with self._cv:
            self._hold()
            self._waiting.append(seq)
            self._cv.notify_all()
        return handle

    def _hold(self) -> None:
        """Take a place under the admission bound, or raise EngineOverloaded (under `_cv`)."""
        self._admission.hold(len(self._sequences.rows), len(self._waiting), self.retry_after_seconds)

    def retry_after_seconds(self) -> int:
        """When a refused client may find room: a place under the bound frees when the first running
        generation ends, at the latest after its remaining tokens at the recent step time."""
        remaining = tokens_until_a_place_frees(list(self._sequences.rows), self._waiting, self.max_batch)
        return estimate_retry_after(remaining, self.stats.step_seconds)

    async def next_token_distribution(
        self, prompt_ids: list[int], top_k: int, temperature: float = 1.0, explain_with: SamplingParams | None = None
    ) -> Distribution:
        """The model's next-token distribution after `prompt_ids`; concurrent calls share one forward pass.
        With `explain_with`, also the sampler's stages under those settings (sampler_explain.py)."""
        self._check_accepting()
        future: concurrent.futures.Future[Distribution] = concurrent.futures.Future()
        with self._cv:
            self._hold()
            self._distributions.append(DistributionRequest(list(prompt_ids), top_k, temperature, future, explain_with))
            self._cv.notify_all()
        future.add_done_callback(lambda _: self._admission.unhold())
        return await asyncio.wrap_future(future)

    async def embed(self, inputs: list[list[int]]) -> torch.Tensor:
        """One unit vector per input (token ids, none empty), float32 [len(inputs), hidden], pooled by
        GENAI_EMBEDDING_POOLING; concurrent requests' inputs share padded passes (embeddings.py)."""
        self._check_accepting()
        job = EmbeddingJob([list(ids) for ids in inputs])
        with self._cv:
            self._hold()
            self._embeddings.add(job)
            self._cv.notify_all()
        job.future.add_done_callback(lambda _: self._admission.unhold())
        return await asyncio.wrap_future(job.future)

    async def run_on_engine_thread(self, fn: Callable[..., T], *args: Any, held: bool = False) -> T:
        """Run other model work (scoring a prompt, say) on the engine thread between two steps, so that
        the model is only ever used from one thread. It takes an admission place for the call, unless the
        caller `held` one already (`hold_place`: several calls that are one request's work)."""
        self._check_accepting()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._cv:
            if not held:
                self._hold()
            self._calls.append((lambda: fn(*args), future))
            self._cv.notify_all()
        if not held:
            future.add_done_callback(lambda _: self._admission.unhold())
        return await asyncio.wrap_future(future)

    def hold_place(self) -> None:
        """Take one admission place for work made of several engine calls (an inspection's pieces), or raise
        EngineOverloaded now, before any of it runs; `release_place` gives it back."""
        self._check_accepting()
        with self._cv:
            self._hold()

    def release_place(self) -> None:
        self._admission.unhold()

    async def next_token_logits(self, prompts: list[list[int]]) -> torch.Tensor:
        """Float32 next-token logits [len(prompts), vocab] after each prompt, by the forward pass the engine
        serves with (what precision checks compare); one batch, on the engine thread."""
        return await self.run_on_engine_thread(self._batch.last_logits, prompts)

    async def prompt_logprobs(self, ids: list[int], top_n: int) -> list[tuple[float, list[Candidate]]]:
        """For each prompt token after the first: its logprob given the tokens before it, and the `top_n`
        likeliest tokens at that place; by the forward pass the engine serves with, on its thread."""
        return await self.run_on_engine_thread(self._prompt_logprobs, ids, top_n)

    def _prompt_logprobs(self, ids: list[int], top_n: int) -> list[tuple[float, list[Candidate]]]:
        logits = self._batch.prompt_logits(ids)[:, : self.lm.vocab_size]  # [len(ids), vocab]
        return token_choice.prompt_logprobs(logits, ids, top_n, self.lm.token_text)

    def _check_accepting(self) -> None:
        if self._dead is not None:
            raise EngineNotReady(f"the generation engine stopped: {self._dead}")
        if not self._accepting:
            raise EngineNotReady("the service is shutting down and accepts no new work", retry_after_seconds=5)

    # ---- the engine thread ----------------------------------------------------------------

    def _loop_forever(self) -> None:
        torch.set_num_threads(engine_threads(self.settings))
        try:
            with torch.inference_mode():
                while True:
                    with self._cv:
                        while not (
                            self._stopping
                            or self._waiting
                            or self._distributions
                            or self._embeddings
                            or self._sequences.rows
                            or self._calls
                        ):
                            self._cv.wait()
                        if self._stopping:
                            break
                        distributions = list(self._distributions)
                        self._distributions.clear()
                        calls = list(self._calls)
                        self._calls.clear()
                        embedding_pass = self._embeddings.take()
                        admitted: list[GenerationState] = []
                        while self._waiting and len(self._sequences.rows) + len(admitted) < self.max_batch:
                            admitted.append(self._waiting.popleft())
                    try:
                        if calls:
                            self._run_calls(calls)
                        if distributions:
                            serve_distributions(self._batch, distributions, self.lm.vocab_size, self.lm.token_text)
                        if embedding_pass:
                            self._embedder.serve(embedding_pass)
                            embedding_pass = []  # answered: a failure later in this step is not theirs
                        self._sequences.retire_interrupted()
                        self._retire_interrupted_waiting()
                        if admitted:
                            self._sequences.admit(admitted)
                        if self._sequences.rows:
                            self._sequences.step()
                    except Exception as exc:  # a model error must not kill the engine: fail the affected requests
                        log.exception("engine step failed")
                        message = f"{type(exc).__name__}: {exc}"
                        failed = functools.partial(GenerationFailed, message)
                        fail_distributions(distributions, failed)
                        fail_embeddings([job for job, _ in embedding_pass], failed)
                        self._sequences.fail(message, admitted)
        except BaseException as exc:  # pragma: no cover - only on interpreter shutdown
            self._dead = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._drain_on_stop()

    def _run_calls(self, calls: list[_Call]) -> None:
        for call, future in calls:
            if future.cancelled():
                continue
            try:
                future.set_result(call())
            except Exception as exc:  # reported to the caller, not fatal to the engine
                future.set_exception(exc)

    def _retire_interrupted_waiting(self) -> None:
        """Finish queued generations whose client cancelled or whose deadline passed before their turn."""
        now = time.monotonic()
        ended: list[tuple[GenerationState, FinishReason]] = []
        with self._cv:
            for seq in self._waiting:
                reason = interruption(seq.handle.cancelled, seq.deadline, now)
                if reason is not None:
                    ended.append((seq, reason))
            for seq, _ in ended:
                self._waiting.remove(seq)
        for seq, reason in ended:
            self._sequences.finish(seq, reason)

    def _drain_on_stop(self) -> None:
        with self._cv:
            leftovers = list(self._waiting)
            self._waiting.clear()
            distributions = list(self._distributions)
            self._distributions.clear()
            calls = list(self._calls)
            self._calls.clear()
            embeddings = self._embeddings.drain()
        self._sequences.fail("the service shut down before this generation finished", leftovers)
        fail_embeddings(embeddings, lambda: EngineNotReady("the service is shutting down"))
        fail_distributions(distributions, lambda: EngineNotReady("the service is shutting down"))
        for _, future in calls:
            if not future.done():
                future.set_exception(EngineNotReady("the service is shutting down"))
