"""Structured output: a request's constraint (a JSON schema, a regular expression, a choice of strings)
compiled into a grammar whose token masks decide which tokens a row may take next.

Three layers, so that the engine never sees a library:
  * `Constraint`: what a request asks (part of its `SamplingParams`); `field` is the caller's own name
    for it, so a refusal names the field its client sent;
  * a `GrammarBackend` compiles one into a `CompiledGrammar`, whose `new_matcher` starts a `Matcher`
    for one generation; grammar_llguidance.py is the one backend the service uses (chosen by measuring
    the mask time per step: bench/grammar_masks.py), tests pass a fake;
  * `GrammarState` is a row's matcher on the engine thread: its mask (`allowed`) for the next token,
    with the end-of-sequence tokens allowed only where the grammar accepts the text so far, `advance`
    after each token, `finished` once the grammar takes nothing more, and `valid_prefix` for drafts.

`Grammars` compiles on one worker thread of its own, never on the event loop nor on the engine thread
(which would stall every running row), keeps the latest compiled grammars, and refuses a request whose
compile takes longer than GENAI_GRAMMAR_COMPILE_TIMEOUT_S (the compile itself runs on and is kept). A constraint the backend cannot compile is an
`InvalidRequest` naming the field, with the backend's reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from service.language.exceptions import InvalidRequest

ConstraintKind = Literal["json_schema", "regex", "choice"]
_CACHED_GRAMMARS = 64  # compiled grammars kept for reuse (a client sends the same schema again and again)
_GrammarKey = tuple[ConstraintKind, str | tuple[str, ...]]


@dataclass(frozen=True)
class Constraint:
    """What a request constrains its output to: `json_schema` (the schema as JSON text), `regex` (the
    whole output matches it), or `choice` (the output is one of the strings). `field` is the request's
    own name for it (`json_schema`, `response_format.json_schema.schema`, `guided_regex`, …)."""

    kind: ConstraintKind
    value: str | tuple[str, ...]
    field: str

    @classmethod
    def json_schema(cls, schema: object, field: str) -> Constraint:
        return cls("json_schema", json.dumps(schema, ensure_ascii=False), field)


class GrammarError(ValueError):
    """The backend cannot compile a constraint; the message is its reason."""


class Matcher(Protocol):
    """One generation's position in a compiled grammar (used on the engine thread only)."""

    def allowed(self) -> torch.Tensor:
        """Bool [vocab]: the tokens the grammar allows next (end-of-sequence tokens aside: `GrammarState`
        decides those by `accepting`)."""
        ...

    def consume(self, token_id: int) -> bool:
        """Take a token; False if the grammar does not allow it (the matcher is then unusable)."""
        ...

    def accepting(self) -> bool:
        """Whether the text so far is a whole match (generation may end here)."""
        ...

    def finished(self) -> bool:
        """Whether the grammar allows no token any more (only the end)."""
        ...

    def valid_prefix(self, tokens: list[int]) -> int:
        """How many of `tokens`, in order, the grammar would take from here (nothing consumed)."""
        ...


class CompiledGrammar(Protocol):
    def new_matcher(self) -> Matcher: ...


class GrammarBackend(Protocol):
    @property
    def name(self) -> str: ...

    def compile(self, constraint: Constraint) -> CompiledGrammar:
        """Compile, or raise GrammarError with the reason (runs on a worker thread)."""
        ...


class GrammarState:
    """A row's grammar on the engine thread: the mask for its next token, and its progress."""

    def __init__(self, matcher: Matcher, eos_token_ids: Iterable[int], *, ignore_eos: bool = False) -> None:
        self._matcher = matcher
        self._eos = sorted(eos_token_ids)
        self._ignore_eos = ignore_eos
        self._mask: torch.Tensor | None = None  # for the next token, until it is taken
        self.failed = False  # the chosen token was refused (cannot happen when the mask was applied)

    def allowed(self) -> torch.Tensor:
        """Bool [vocab]: tokens the row may take next. End-of-sequence only where the grammar accepts
        the text so far (never with `ignore_eos`), or where nothing else is left (a grammar that is stuck
        ends the row rather than force an arbitrary token)."""
        if self._mask is None:
            mask = self._matcher.allowed().clone()
            eos = [i for i in self._eos if i < mask.shape[-1]]
            mask[eos] = self._matcher.accepting() and not self._ignore_eos
            if not bool(mask.any()):
                mask[eos] = True
            self._mask = mask
        return self._mask

    def advance(self, token_id: int) -> None:
        """Take the row's new token (an end-of-sequence token ends the row and is not fed)."""
        self._mask = None
        if token_id in self._eos:
            return
        if not self._matcher.consume(token_id):
            self.failed = True

    @property
    def finished(self) -> bool:
        """The grammar takes no more tokens: the row stops (finish reason `stop`)."""
        return self.failed or self._matcher.finished()

    def valid_prefix(self, draft: list[int]) -> list[int]:
        """The longest start of a prompt-lookup draft the grammar allows from here, cut before any
        end-of-sequence token (drafts only continue a text)."""
        cut = next((at for at, token in enumerate(draft) if token in self._eos), len(draft))
        return draft[: self._matcher.valid_prefix(draft[:cut])] if cut else []


def mask_logits(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """`logits` [..., vocab] with the tokens not `allowed` [vocab] at -inf (a new tensor)."""
    return logits.masked_fill(~allowed, float("-inf"))


class Grammars:
    """Compiles constraints for one model on a worker thread of its own, and keeps the recent ones.

    `backend` makes the backend on that thread the first time one is needed (building a library's view of
    a 49,152-token vocabulary takes about a second). A compile cannot be interrupted, so one that outlives
    its request's time limit runs on: requests for the same constraint meanwhile wait on that same compile
    rather than queue another, and its grammar is kept when it finishes, so a client's retry gets it at once.
    The limit counts from the request's arrival, queueing behind other compiles included."""

    def __init__(self, backend: Callable[[], GrammarBackend], timeout_s: float) -> None:
        self._make_backend = backend
        self._backend: GrammarBackend | None = None
        self._timeout_s = timeout_s
        self._cache: OrderedDict[_GrammarKey, CompiledGrammar] = OrderedDict()
        self._compiling: dict[_GrammarKey, concurrent.futures.Future[CompiledGrammar]] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-compile")

    def _compile_now(self, constraint: Constraint) -> CompiledGrammar:
        if self._backend is None:
            self._backend = self._make_backend()
        return self._backend.compile(constraint)

    def _keep(self, key: _GrammarKey, compiled: CompiledGrammar) -> None:
        self._cache[key] = compiled
        self._cache.move_to_end(key)
        while len(self._cache) > _CACHED_GRAMMARS:
            self._cache.popitem(last=False)

    def _finished(self, key: _GrammarKey, future: concurrent.futures.Future[CompiledGrammar]) -> None:
        """On the event loop, whoever waited or not: keep the grammar, forget the compile."""
        self._compiling.pop(key, None)
        if not future.cancelled() and future.exception() is None:
            self._keep(key, future.result())

    def _start(self, key: _GrammarKey, constraint: Constraint) -> concurrent.futures.Future[CompiledGrammar]:
        future = self._compiling.get(key)
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._executor.submit(self._compile_now, constraint)
            self._compiling[key] = future

            def finished_on_the_loop(done: concurrent.futures.Future[CompiledGrammar]) -> None:
                with contextlib.suppress(RuntimeError):  # the loop closed first (shutdown mid-compile)
                    loop.call_soon_threadsafe(self._finished, key, done)

            future.add_done_callback(finished_on_the_loop)
        return future

    async def compile(self, constraint: Constraint) -> CompiledGrammar:
        """The compiled grammar (from the cache when the same constraint came before); InvalidRequest
        naming `constraint.field` when the backend refuses it or takes too long."""
        key = (constraint.kind, constraint.value)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        future = self._start(key, constraint)
        try:
            # shield: a request that stops waiting leaves the compile (and whoever else waits on it) alone
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), self._timeout_s)
        except asyncio.TimeoutError as exc:  # TimeoutError from Python 3.11 on
            raise InvalidRequest(
                constraint.field,
                f"{constraint.field}: compiling it took longer than {self._timeout_s:g} s (GENAI_GRAMMAR_COMPILE_TIMEOUT_S); "
                "it goes on compiling, and the same constraint sent again once it is done is served at once",
            ) from exc
        except GrammarError as exc:
            raise InvalidRequest(constraint.field, f"{constraint.field} cannot be used as a constraint: {exc}") from exc

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
