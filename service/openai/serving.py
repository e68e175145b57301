"""Serving OpenAI requests on the generation engine: prompts in, choices (whole or streamed) out.

The router validates and calls these; the engine does the work. Prompt validation, sampling limits
and the chat template are the native API's (`service.language.validation`), so both APIs enforce the
same limits; only parameter names are translated (`max_new_tokens` → `max_tokens`, ...).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from service.config import Settings
from service.errors import GenerationError, InvalidInput, ServiceError, TimedOut
from service.language.engine import GenerationEngine
from service.language.events import (
    Candidate,
    ErrorEvent,
    FinishEvent,
    GenerationFailed,
    GenerationHandle,
    TokenEvent,
)
from service.language.model import LanguageModel
from service.language.sampling import SamplingParams
from service.language.schemas import ChatMessage, GenerateRequest
from service.language.validation import check_token_ids, encode_messages, encode_prompt, prompt_token_limit, sampling_params
from service.observability.context import add_usage
from service.openai.schemas import ChatCompletionRequest, CompletionRequest, MAX_CHOICES, StreamOptions

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "time_limit": "length", "cancelled": "stop"}
_MIN_LOGPROB = -9999.0  # JSON has no -inf; vLLM clamps the same way


class ModelNotFound(ServiceError):
    status_code = 404
    error_type = "invalid_request_error"


def check_model(requested: str | None, lm: LanguageModel) -> str:
    if requested in (None, "", lm.model_id):
        return lm.model_id
    raise ModelNotFound(
        f"The model `{requested}` does not exist; this server serves `{lm.model_id}` (see GET /v1/models)", param="model"
    )


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def clamp(logprob: float) -> float:
    return max(float(logprob), _MIN_LOGPROB)


# ---- prompts and parameters -------------------------------------------------------------------


@dataclass
class Prompt:
    ids: list[int]
    text: str


def completion_prompts(body: CompletionRequest, lm: LanguageModel, settings: Settings) -> list[Prompt]:
    prompts: list[Prompt] = []
    for item in body.prompts():
        if isinstance(item, str):
            ids = encode_prompt(lm, settings, prompt=item, parse_special=body.parse_special)
            prompts.append(Prompt(ids=ids, text=item))
        else:
            check_token_ids(lm, item, field="prompt")
            limit = prompt_token_limit(lm, settings)
            if len(item) > limit:
                raise InvalidInput(f"prompt has {len(item)} tokens; the limit is {limit}", param="prompt")
            prompts.append(Prompt(ids=list(item), text=lm.detokenize(item)))
    if len(prompts) * body.n > MAX_CHOICES:
        raise InvalidInput(f"{len(prompts)} prompts × n = {body.n} asks for more than {MAX_CHOICES} choices", param="n")
    return prompts


def chat_prompt(body: ChatCompletionRequest, lm: LanguageModel, settings: Settings) -> Prompt:
    messages = [ChatMessage(role=m.template_role(), content=m.text()) for m in body.messages]
    text, ids = encode_messages(lm, settings, messages)
    return Prompt(ids=ids, text=text)


_PARAM_NAMES = {"max_new_tokens": "max_tokens", "top_alternatives": "top_logprobs"}


def engine_params(
    body: CompletionRequest | ChatCompletionRequest,
    prompt_tokens: int,
    max_tokens: int | None,
    default_max_tokens: int,
    top_alternatives: int,
    lm: LanguageModel,
    settings: Settings,
    *,
    logprobs_param: str,
) -> SamplingParams:
    """The native validation (`sampling_params`) with OpenAI's defaults and names."""
    if max_tokens is None:  # a default, not a request: fit it into what the context leaves
        max_tokens = max(1, min(default_max_tokens, lm.context_length - prompt_tokens))
    temperature = 1.0 if body.temperature is None else body.temperature
    native = GenerateRequest.model_construct(
        max_new_tokens=max_tokens,
        do_sample=temperature > 0,
        temperature=temperature,
        top_k=body.top_k,
        top_p=1.0 if body.top_p is None else body.top_p,
        repetition_penalty=body.repetition_penalty,
        seed=body.seed,
        stop=body.stop,
        ignore_eos=body.ignore_eos,
        top_alternatives=top_alternatives,
        timeout_s=body.timeout_s,
    )
    names = {**_PARAM_NAMES, "top_alternatives": logprobs_param}
    try:
        return sampling_params(native, prompt_tokens, lm, settings)
    except InvalidInput as exc:
        message = exc.message
        for native_name, openai_name in names.items():
            message = message.replace(native_name, openai_name)
        raise InvalidInput(message, param=names.get(exc.param or "", exc.param)) from exc


def seeded(params: SamplingParams, offset: int) -> SamplingParams:
    """Choice i of n samples with seed + i, so that n > 1 with a seed gives n different but repeatable texts."""
    if params.seed is None or offset == 0:
        return params
    return replace(params, seed=(params.seed + offset) % 2**63)


# ---- running choices ---------------------------------------------------------------------------


@dataclass
class ChoiceSpec:
    index: int
    prompt: Prompt
    params: SamplingParams | None  # None: nothing to generate (max_tokens = 0 with echo)


@dataclass
class ChoiceResult:
    spec: ChoiceSpec
    tokens: list[TokenEvent] = field(default_factory=list)
    finish: FinishEvent | None = None


def submit_all(engine: GenerationEngine, specs: list[ChoiceSpec]) -> dict[int, GenerationHandle]:
    handles: dict[int, GenerationHandle] = {}
    try:
        for spec in specs:
            if spec.params is not None:
                handles[spec.index] = engine.submit(spec.prompt.ids, spec.params)
    except BaseException:
        for handle in handles.values():
            handle.cancel()
        raise
    return handles


async def collect(specs: list[ChoiceSpec], handles: dict[int, GenerationHandle]) -> list[ChoiceResult]:
    """Wait for every choice; cancels them all if one fails or the caller is cancelled."""
    results = {spec.index: ChoiceResult(spec) for spec in specs}

    async def one(index: int, handle: GenerationHandle) -> None:
        tokens, finish = await handle.result()
        results[index].tokens = tokens
        results[index].finish = finish

    try:
        await asyncio.gather(*(one(i, h) for i, h in handles.items()))
    except GenerationFailed as exc:
        raise GenerationError(str(exc)) from exc
    finally:
        for handle in handles.values():
            handle.cancel()
    for result in results.values():
        finish = result.finish
        if finish is not None:
            add_usage(completion_tokens=finish.completion_tokens)
            if finish.finish_reason == "time_limit" and finish.completion_tokens == 0:  # as the native /generate
                raise TimedOut(
                    f"no token within the time limit of the request (GENAI_REQUEST_TIMEOUT_S); waited {finish.total_seconds:.1f} s",
                    headers={"Retry-After": "1"},
                )
    return [results[spec.index] for spec in specs]


async def merged_events(handles: dict[int, GenerationHandle]) -> AsyncIterator[tuple[int, Any]]:
    """(choice index, engine event) from every handle, as they come; closing the iterator cancels them all."""
    if len(handles) == 1:
        (index, handle), = handles.items()
        try:
            async for event in handle.events():
                yield index, event
        finally:
            handle.cancel()
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(index: int, handle: GenerationHandle) -> None:
        async for event in handle.events():
            await queue.put((index, event))

    tasks = [asyncio.create_task(pump(i, h)) for i, h in handles.items()]
    remaining = len(handles)
    try:
        while remaining:
            index, event = await queue.get()
            if isinstance(event, (FinishEvent, ErrorEvent)):
                remaining -= 1
            yield index, event
    finally:
        for task in tasks:
            task.cancel()
        for handle in handles.values():
            handle.cancel()


def finish_reason(finish: FinishEvent | None) -> str:
    return FINISH_REASONS.get(finish.finish_reason, "stop") if finish is not None else "length"


def is_end_token(event: TokenEvent, lm: LanguageModel) -> bool:
    """The end-of-sequence token that closed a text: counted in usage, not shown as text or logprob."""
    return event.special and event.id in lm.eos_token_ids


# ---- logprobs ----------------------------------------------------------------------------------


def chat_token_logprob(lm: LanguageModel, token_id: int, token: str, logprob: float, alternatives: list[Candidate] | None) -> dict[str, Any]:
    return {
        "token": token,
        "logprob": clamp(logprob),
        "bytes": lm.token_bytes(token_id),
        "top_logprobs": [
            {"token": c.token, "logprob": clamp(c.logprob), "bytes": lm.token_bytes(c.id)} for c in alternatives or []
        ],
    }


@dataclass
class LegacyLogprobs:
    """OpenAI's completions `logprobs` object, built token by token."""

    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)
    offset: int = 0

    def add(self, token: str, logprob: float | None, alternatives: list[tuple[str, float]] | None) -> None:
        self.tokens.append(token)
        self.token_logprobs.append(clamp(logprob) if logprob is not None else None)
        self.top_logprobs.append({t: clamp(lp) for t, lp in alternatives} if alternatives is not None else None)
        self.text_offset.append(self.offset)
        self.offset += len(token)

    def add_event(self, event: TokenEvent) -> None:
        self.add(event.token, event.logprob, [(c.token, c.logprob) for c in event.alternatives or []])

    def as_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        }


async def prompt_logprobs(engine: GenerationEngine, lm: LanguageModel, prompt: Prompt, top_n: int) -> LegacyLogprobs:
    """The prompt's own tokens with their logprobs (the first has none), as `echo` + `logprobs` returns them."""
    result = LegacyLogprobs()
    if not prompt.ids:
        return result
    scores = await engine.prompt_logprobs(prompt.ids, top_n)
    result.add(lm.token_text(prompt.ids[0]), None, None)
    for token_id, (logprob, candidates) in zip(prompt.ids[1:], scores):
        result.add(lm.token_text(token_id), logprob, [(c.token, c.logprob) for c in candidates])
    return result


# ---- SSE ----------------------------------------------------------------------------------------


def sse_data(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def error_chunk(message: str) -> str:
    return sse_data({"error": {"message": message, "type": "server_error", "param": None, "code": 500}})


def now() -> int:
    return int(time.time())


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


class StreamUsage:
    """What a /v1 stream says about usage, as OpenAI sends it.

    Without `stream_options.include_usage` no chunk has a `usage` field. With it, every chunk carries
    `"usage": null` and a last chunk with empty `choices` carries the usage of the whole request, so a
    client that adds up every chunk's usage (LangChain's `stream_usage=True`) counts each token once.
    With vLLM's `continuous_usage_stats` as well, every chunk carries the request's usage so far instead
    of `null` (all choices together: the completion tokens generated up to that chunk, end tokens included).
    """

    def __init__(self, options: StreamOptions | None, prompt_tokens: int) -> None:
        self.include = bool(options is not None and options.include_usage)
        self.continuous = self.include and bool(options is not None and options.continuous_usage_stats)
        self.prompt_tokens = prompt_tokens
        self._generated: dict[int, int] = {}  # choice index -> completion tokens so far

    def count(self, index: int, completion_tokens: int) -> None:
        self._generated[index] = completion_tokens

    def total(self) -> dict[str, int]:
        return usage_dict(self.prompt_tokens, sum(self._generated.values()))

    def fields(self) -> dict[str, Any]:
        """The `usage` entry of a chunk with choices: none, `null`, or the usage so far."""
        if not self.include:
            return {}
        return {"usage": self.total() if self.continuous else None}


async def stream_choices(
    handles: dict[int, GenerationHandle],
    lm: LanguageModel,
    usage: StreamUsage,
    *,
    token_chunk: Callable[[int, TokenEvent], str | None],
    finish_chunk: Callable[[int, str], str],
    usage_chunk: Callable[[dict[str, int]], str],
) -> AsyncIterator[str]:
    """What every /v1 stream shares: the choices' events merged as they come, the usage counted as
    tokens arrive (chunk builders read it through `usage.fields()`), the usage-only last chunk when
    `include_usage` asks for it, an error chunk if generation fails, `[DONE]` at the end, and every
    generation cancelled if the client leaves early. Endpoints only shape their chunks."""
    try:
        async for index, event in merged_events(handles):
            if isinstance(event, TokenEvent):
                usage.count(index, event.index + 1)
                if is_end_token(event, lm):
                    continue  # counted, not shown: the finish chunk's usage includes it
                piece = token_chunk(index, event)
                if piece is not None:
                    yield piece
            elif isinstance(event, FinishEvent):
                usage.count(index, event.completion_tokens)
                add_usage(completion_tokens=event.completion_tokens)
                yield finish_chunk(index, finish_reason(event))
            elif isinstance(event, ErrorEvent):
                yield error_chunk(event.message)
                yield "[DONE]"  # as vLLM: readers that wait for the terminator stop cleanly
                return
        if usage.include:
            yield usage_chunk(usage.total())
        yield "[DONE]"
    finally:
        for handle in handles.values():
            handle.cancel()
