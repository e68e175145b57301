"""Embeddings: one unit vector per input, pooled from the language model's last hidden states.

What a vector is: the last layer's output *after the model's final norm* (what transformers returns as
`last_hidden_state`, and what vLLM's and TEI's poolers read), pooled over the input's tokens and
L2-normalised to length 1, in float32:
  - `mean` (the default, GENAI_EMBEDDING_POOLING): the average of every token's state;
  - `last`: the state of the input's last token (the one that predicts what follows; vLLM's LAST pooling).
No special token is added to an input, so an input's vector is that of exactly the tokens it gives.

How: the event loop queues an `EmbeddingJob` (every input of one request, as token ids); the engine thread
takes queued inputs in passes of at most `PASS_TOKENS` padded tokens (`EmbeddingQueue.take`, between two
decode steps, so a large request never stalls the running generations for long) and runs each pass as one
padded forward (`serve_embeddings`). Inputs are right-padded: a causal model's token never sees the tokens
after it, and the attention mask hides the padding too, so a padded input computes what it computes alone
(float32: the same vector within rounding, about 1e-7). Two forwards:
  - `LeanHiddenStates`: the lean decoder's own `forward` (the one the engine serves with), with its output
    layer left out, so its last step is the final norm;
  - `TransformersHiddenStates`: transformers' base model (`model.base_model`, the model without its
    language-modelling head) for every other model.
"""

from __future__ import annotations

import concurrent.futures
import copy
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
import torch.nn.functional as F

from service.language.model import LanguageModel

Pooling = Literal["mean", "last"]
POOLINGS: tuple[Pooling, ...] = ("mean", "last")

MAX_INPUTS = 2048  # inputs one request may give (OpenAI's limit)
MAX_REQUEST_TOKENS = 300_000  # tokens of all a request's inputs together (OpenAI's limit)
PASS_TOKENS = 2048  # padded tokens (rows × longest input) one forward pass takes; a longer input runs alone
PASS_ROWS = 64  # inputs one forward pass takes


class HiddenStates(Protocol):
    """A forward pass that returns the last layer's states after the final norm."""

    @property
    def kind(self) -> str: ...

    @property
    def hidden_size(self) -> int: ...

    def states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`ids` [n, S] right-padded and `mask` [n, S] (true on real tokens), on the CPU -> float32 states
        [n, S, hidden] on the model's device."""
        ...


class LeanHiddenStates:
    """The lean decoder's forward, the same products and norms as generation, its output layer replaced by
    the identity on a shallow copy (the weights are shared, not copied)."""

    kind = "lean-llama"

    def __init__(self, lm: LanguageModel) -> None:
        from service.language.llama_decoder import LlamaDecoder

        self._decoder = copy.copy(LlamaDecoder.shared(lm))
        self._decoder.lm_head = _identity
        self.hidden_size = hidden_size(lm)

    def states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, width = ids.shape
        device = self._decoder.device
        positions = torch.arange(width, dtype=torch.long).expand(n, width)
        scratch = self._decoder.new_cache(n, width)  # this pass's keys and values, let go after it
        return self._decoder.forward(ids.to(device), positions.to(device), scratch, None)


class TransformersHiddenStates:
    """Any transformers causal LM: its base model's `last_hidden_state` (after its final norm, e.g. GPT-2's
    `ln_f`, Llama's `norm`), with the padding mask and each token's own position."""

    kind = "transformers"

    def __init__(self, lm: LanguageModel) -> None:
        self._base = lm.module().base_model
        self._device = lm.device
        self.hidden_size = hidden_size(lm)

    def states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, width = ids.shape
        device = self._device
        positions = torch.arange(width, dtype=torch.long).expand(n, width)
        out = self._base(
            input_ids=ids.to(device),
            attention_mask=mask.long().to(device),
            position_ids=positions.to(device),
            use_cache=False,
        )
        hidden: torch.Tensor = out.last_hidden_state
        return hidden.float()


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def hidden_size(lm: LanguageModel) -> int:
    """The length of the model's vectors (its hidden size; GPT-2 calls it `n_embd`)."""
    return int(lm.config.hidden_size)


def hidden_states_for(lm: LanguageModel, lean: bool = True) -> HiddenStates:
    """The lean decoder's forward when it serves the model (and `lean`), else transformers' base model."""
    if lean:
        from service.language.llama_decoder import LlamaDecoder

        if LlamaDecoder.unsupported_reason(lm) is None:
            return LeanHiddenStates(lm)
    return TransformersHiddenStates(lm)


def pool(states: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """float32 [n, S, hidden] states and their [n, S] mask -> [n, hidden] unit vectors (padding never counts)."""
    states = states.float()
    if pooling == "mean":
        kept = torch.where(mask[:, :, None], states, torch.zeros((), dtype=states.dtype, device=states.device))
        pooled = kept.sum(dim=1) / mask.sum(dim=1, keepdim=True).to(states.dtype)
    elif pooling == "last":
        last = mask.long().sum(dim=1) - 1  # right padding: the last real token's column
        pooled = states[torch.arange(states.shape[0], device=states.device), last]
    else:
        raise ValueError(f"unknown pooling {pooling!r}; one of {', '.join(POOLINGS)}")
    return F.normalize(pooled, p=2.0, dim=-1)


def embed(model: HiddenStates, inputs: list[list[int]], pooling: Pooling, pad_id: int) -> torch.Tensor:
    """One padded forward pass over `inputs` (each at least one token): float32 [len(inputs), hidden]."""
    width = max(len(ids) for ids in inputs)
    ids = torch.full((len(inputs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(inputs), width), dtype=torch.bool)
    for row, tokens in enumerate(inputs):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = True
    states = model.states(ids, mask)
    return pool(states, mask.to(states.device), pooling).cpu()


# ---- the request kind the engine queues ----------------------------------------------------------


@dataclass
class EmbeddingJob:
    """Every input of one request; `future` gets float32 [len(inputs), hidden] in the inputs' order."""

    inputs: list[list[int]]
    future: concurrent.futures.Future[torch.Tensor] = field(default_factory=concurrent.futures.Future)
    vectors: dict[int, torch.Tensor] = field(default_factory=dict)
    # inputs not yet taken by a pass, shortest first (less padding in a pass)
    pending: deque[int] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.pending = deque(sorted(range(len(self.inputs)), key=lambda i: len(self.inputs[i])))


Item = tuple[EmbeddingJob, int]  # (job, index of one of its inputs)


class EmbeddingQueue:
    """Jobs waiting for the engine thread, oldest first. Not thread-safe: the engine guards it with its lock."""

    def __init__(self) -> None:
        self._jobs: deque[EmbeddingJob] = deque()

    def __bool__(self) -> bool:
        return bool(self._jobs)

    def add(self, job: EmbeddingJob) -> None:
        self._jobs.append(job)

    def take(self, max_tokens: int = PASS_TOKENS, max_rows: int = PASS_ROWS) -> list[Item]:
        """The next pass: inputs of the oldest jobs, in order, while rows × longest stays within `max_tokens`
        (at least one input, however long). Cancelled jobs are dropped."""
        taken: list[Item] = []
        width = 0
        while self._jobs:
            job = self._jobs[0]
            if job.future.done():  # cancelled (its client left) or failed
                self._jobs.popleft()
                continue
            while job.pending and len(taken) < max_rows:
                index = job.pending[0]
                wider = max(width, len(job.inputs[index]))
                if taken and (len(taken) + 1) * wider > max_tokens:
                    return taken
                taken.append((job, job.pending.popleft()))
                width = wider
            if job.pending:  # the pass is full
                return taken
            self._jobs.popleft()
        return taken

    def drain(self) -> list[EmbeddingJob]:
        jobs = list(self._jobs)
        self._jobs.clear()
        return jobs


class Embedder:
    """What the engine thread runs for embeddings: the forward (built at its first pass, on that thread),
    the pooling and the padding token."""

    def __init__(self, lm: LanguageModel, pooling: Pooling, lean: bool = True) -> None:
        self.lm = lm
        self.pooling = pooling
        self.lean = lean
        self._model: HiddenStates | None = None

    @property
    def model(self) -> HiddenStates:
        if self._model is None:
            self._model = hidden_states_for(self.lm, self.lean)
        return self._model

    def serve(self, items: list[Item]) -> None:
        """Run one pass over `items` and answer every job whose last input it was."""
        live = [(job, index) for job, index in items if not job.future.done()]
        if not live:
            return
        pad_id = int(self.lm.tokenizer.pad_token_id or 0)
        vectors = embed(self.model, [job.inputs[index] for job, index in live], self.pooling, pad_id)
        for row, (job, index) in enumerate(live):
            job.vectors[index] = vectors[row]
            if len(job.vectors) == len(job.inputs) and not job.future.done():
                job.future.set_result(torch.stack([job.vectors[i] for i in range(len(job.inputs))]))


def fail_embeddings(jobs: list[EmbeddingJob], error: Callable[[], Exception]) -> None:
    """Fail every job not yet answered, each with its own exception (`error()`)."""
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(error())
