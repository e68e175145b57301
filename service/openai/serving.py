"""Serving OpenAI requests on the generation engine: prompts in, choices out (whole here; streamed in
streams.py).

The router validates and calls these; the engine does the work. Prompt validation, sampling limits
and the chat template are the native API's (`service.language.validation`, reached through each
request's `to_sampling_params`), so both APIs enforce the same limits, each naming its own fields.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from typing import Any

from service.config import Settings
from service.errors import GenerationError, InvalidInput, ModelNotFound
from service.language.engine import GenerationEngine
from service.language.events import (
    Candidate,
    EngineEvent,
    ErrorEvent,
    FinishEvent,
    GenerationFailed,
    GenerationHandle,
    TokenEvent,
)
from service.language.grammar import CompiledGrammar
from service.language.model import LanguageModel
from service.language.sampling import SamplingParams
from service.language.validation import (
    SamplingLimits,
    check_prompt_ids,
    check_token_ids,
    encode_messages,
    encode_prompt,
)
from service.observability.context import add_usage
from service.openai.messages import template_messages
from service.openai.responses import (
    ChatChoice,
    ChatCompletionResponse,
    ChatMessageOut,
    ChoiceLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    FinishReason,
    TokenLogprob,
    TopLogprob,
)
from service.openai.schemas import MAX_CHOICES, ChatCompletionRequest, CompletionRequest
from service.openai.tool_calls import ToolReader
from service.schemas import Usage
from service.streaming import raise_if_failed_before_first_token

FINISH_REASONS: dict[str, FinishReason] = {
    "eos": "stop",
    "stop": "stop",
    "length": "length",
    "time_limit": "length",
    "cancelled": "stop",
}
_MIN_LOGPROB = -9999.0  # JSON has no -inf; vLLM clamps the same way


def check_model(requested: str | None, lm: LanguageModel) -> str:
    if requested in (None, "", lm.model_id):
        return lm.model_id
    raise ModelNotFound(
        f"The model `{requested}` does not exist; this server serves `{lm.model_id}` (see GET /v1/models)",
        param="model",
    )


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def clamp(logprob: float) -> float:
    return max(float(logprob), _MIN_LOGPROB)


# ---- prompts and parameters -------------------------------------------------------------------


@dataclass
class Prompt:
    ids: list[int]
    text: str


@dataclass
class ChoiceSpec:
    index: int
    prompt: Prompt
    params: SamplingParams | None  # None: nothing to generate (max_tokens = 0 with echo)


def completion_prompts(body: CompletionRequest, lm: LanguageModel, settings: Settings) -> list[Prompt]:
    prompts: list[Prompt] = []
    for item in body.prompts():
        if isinstance(item, str):
            ids = encode_prompt(lm, settings, prompt=item, parse_special=body.parse_special)
            prompts.append(Prompt(ids=ids, text=item))
        else:
            check_token_ids(lm, item, field="prompt")
            check_prompt_ids(item, lm, settings, "prompt")
            prompts.append(Prompt(ids=list(item), text=lm.detokenize(item)))
    if len(prompts) * body.n > MAX_CHOICES:
        raise InvalidInput(f"{len(prompts)} prompts × n = {body.n} asks for more than {MAX_CHOICES} choices", param="n")
    return prompts


def chat_prompt(body: ChatCompletionRequest, lm: LanguageModel, settings: Settings) -> Prompt:
    """The chat rendered with the model's template: tools in its own tools section where it has one
    (messages.py), else in the default format inside the contents."""
    use, native = body.tool_use(), lm.renders_tools
    tools = use.definitions() if native else None
    if native:
        refuse_special_text_outside_contents(body, tools, lm)
    text, ids = encode_messages(
        lm,
        settings,
        template_messages(body.messages, use.prompt(), native_tools=native),
        add_generation_prompt=body.opens_assistant_turn(),
        continue_final_message=body.continue_final_message,
        tools=tools,
    )
    return Prompt(ids=ids, text=text)


def refuse_special_text_outside_contents(
    body: ChatCompletionRequest, tools: list[dict[str, Any]] | None, lm: LanguageModel
) -> None:
    """A template with a tools section writes the definitions and earlier calls itself, outside the contents
    that are encoded as plain text: a special token's text there would become the control token (a turn
    ended, a role forged), so it is refused, naming the field."""
    fields: list[tuple[str, Any]] = [(f"tools.{i}", tool) for i, tool in enumerate(tools or [])]
    fields += [(f"messages.{i}.tool_calls", m.model_dump()["tool_calls"]) for i, m in enumerate(body.messages)]
    for name, value in fields:
        if value is None:
            continue
        text = json.dumps(value, ensure_ascii=False)
        found = sorted(t for t in lm.special_token_texts if t and t in text)
        if found:
            raise InvalidInput(
                f"{name} contains the special-token text {found[0]!r}, which this model's chat template would "
                "write outside the message contents, as a control token",
                param=name,
            )


def seeded(params: SamplingParams, offset: int) -> SamplingParams:
    """Choice i of n samples with seed + i, so that n > 1 with a seed gives n different but repeatable texts."""
    if params.seed is None or offset == 0:
        return params
    return replace(params, seed=(params.seed + offset) % 2**63)


def choice_specs(
    body: CompletionRequest | ChatCompletionRequest, prompts: list[Prompt], lm: LanguageModel, settings: Settings
) -> list[ChoiceSpec]:
    """`n` choices per prompt, in OpenAI's order (prompt by prompt), each prompt's parameters checked against
    what its length leaves of the context."""
    specs: list[ChoiceSpec] = []
    for p_index, prompt in enumerate(prompts):
        params = body.to_sampling_params(SamplingLimits.of(lm, settings, prompt_tokens=len(prompt.ids)))
        for j in range(body.n):
            chosen = seeded(params, j) if params.max_new_tokens > 0 else None
            specs.append(ChoiceSpec(index=p_index * body.n + j, prompt=prompt, params=chosen))
    return specs


# ---- running choices ---------------------------------------------------------------------------


@dataclass
class ChoiceResult:
    spec: ChoiceSpec
    tokens: list[TokenEvent] = field(default_factory=list)
    finish: FinishEvent | None = None


async def compiled_grammar(engine: GenerationEngine, specs: list[ChoiceSpec]) -> CompiledGrammar | None:
    """The compiled grammar of the request's structured-output constraint, which every choice shares (None
    without one); compiled off the event loop, a refusal naming the field (400)."""
    constraint = next((s.params.constraint for s in specs if s.params is not None and s.params.constraint), None)
    return await engine.grammars.compile(constraint) if constraint is not None else None


def submit_all(
    engine: GenerationEngine, specs: list[ChoiceSpec], grammar: CompiledGrammar | None = None
) -> dict[int, GenerationHandle]:
    handles: dict[int, GenerationHandle] = {}
    try:
        for spec in specs:
            if spec.params is not None:
                handles[spec.index] = engine.submit(spec.prompt.ids, spec.params, grammar)
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
        if result.finish is not None:
            add_usage(completion_tokens=result.finish.completion_tokens)
            raise_if_failed_before_first_token(result.finish)  # as the native /generate: 504
    return [results[spec.index] for spec in specs]


async def merged_events(handles: dict[int, GenerationHandle]) -> AsyncGenerator[tuple[int, EngineEvent], None]:
    """(choice index, engine event) from every handle, as they come; closing the iterator cancels them all."""
    if len(handles) == 1:
        ((index, handle),) = handles.items()
        try:
            async for event in handle.events():
                yield index, event
        finally:
            handle.cancel()
        return
    queue: asyncio.Queue[tuple[int, EngineEvent]] = asyncio.Queue()

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


def finish_reason(finish: FinishEvent | None) -> FinishReason:
    return FINISH_REASONS.get(finish.finish_reason, "stop") if finish is not None else "length"


def is_end_token(event: TokenEvent, lm: LanguageModel) -> bool:
    """The end-of-sequence token that closed a text: counted in usage, not shown as text or logprob."""
    return event.special and event.id in lm.eos_token_ids


def completion_tokens(results: list[ChoiceResult]) -> int:
    return sum(r.finish.completion_tokens for r in results if r.finish)


# ---- logprobs ----------------------------------------------------------------------------------


def token_logprob(
    lm: LanguageModel, token_id: int, token: str, logprob: float, alternatives: list[Candidate] | None
) -> TokenLogprob:
    """A chat token's logprob entry, with its alternatives and their UTF-8 bytes."""
    return TokenLogprob(
        token=token,
        logprob=clamp(logprob),
        bytes=lm.token_bytes(token_id),
        top_logprobs=[
            TopLogprob(token=c.token, logprob=clamp(c.logprob), bytes=lm.token_bytes(c.id)) for c in alternatives or []
        ],
    )


def event_logprob(event: TokenEvent, lm: LanguageModel) -> TokenLogprob:
    return token_logprob(lm, event.id, event.token, event.logprob, event.alternatives)


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

    def copy(self) -> LegacyLogprobs:
        return LegacyLogprobs(
            list(self.tokens), list(self.token_logprobs), list(self.top_logprobs), list(self.text_offset), self.offset
        )

    def to_schema(self) -> CompletionLogprobs:
        return CompletionLogprobs(
            tokens=self.tokens,
            token_logprobs=self.token_logprobs,
            top_logprobs=self.top_logprobs,
            text_offset=self.text_offset,
        )


async def prompt_logprobs(engine: GenerationEngine, lm: LanguageModel, prompt: Prompt, top_n: int) -> LegacyLogprobs:
    """The prompt's own tokens with their logprobs (the first has none), as `echo` + `logprobs` returns them."""
    result = LegacyLogprobs()
    if not prompt.ids:
        return result
    scores = await engine.prompt_logprobs(prompt.ids, top_n)
    result.add(lm.token_text(prompt.ids[0]), None, None)
    for token_id, (logprob, candidates) in zip(prompt.ids[1:], scores, strict=True):
        result.add(lm.token_text(token_id), logprob, [(c.token, c.logprob) for c in candidates])
    return result


# ---- whole responses ---------------------------------------------------------------------------


def completion_response(
    body: CompletionRequest,
    results: list[ChoiceResult],
    echoed: dict[int, LegacyLogprobs],
    model: str,
    prompt_tokens: int,
    lm: LanguageModel,
) -> CompletionResponse:
    def choice(result: ChoiceResult) -> CompletionChoice:
        prompt = result.spec.prompt
        logprobs = None
        if body.logprobs is not None:
            source = echoed.get(id(prompt))
            lp = source.copy() if source is not None else LegacyLogprobs()
            for event in result.tokens:
                if not is_end_token(event, lm):
                    lp.add_event(event)
            logprobs = lp.to_schema()
        return CompletionChoice(
            index=result.spec.index,
            text=(prompt.text if body.echo else "") + (result.finish.text if result.finish else ""),
            logprobs=logprobs,
            finish_reason=finish_reason(result.finish),
        )

    return CompletionResponse(
        id=new_id("cmpl"),
        created=now(),
        model=model,
        choices=[choice(r) for r in results],
        usage=Usage.of(prompt_tokens, completion_tokens(results)),
    )


def chat_response(
    body: ChatCompletionRequest,
    results: list[ChoiceResult],
    model: str,
    prompt_tokens: int,
    lm: LanguageModel,
    tools: ToolReader | None = None,
) -> ChatCompletionResponse:
    def choice(result: ChoiceResult) -> ChatChoice:
        logprobs = None
        if body.logprobs:
            logprobs = ChoiceLogprobs(content=[event_logprob(e, lm) for e in result.tokens if not is_end_token(e, lm)])
        text, reason = result.finish.text if result.finish else "", finish_reason(result.finish)
        content: str | None = text
        calls = None
        if tools is not None:
            content, calls, reason = tools.whole(text, reason)
        return ChatChoice(
            index=result.spec.index,
            message=ChatMessageOut(content=content, tool_calls=calls),
            logprobs=logprobs,
            finish_reason=reason,
        )

    return ChatCompletionResponse(
        id=new_id("chatcmpl"),
        created=now(),
        model=model,
        choices=[choice(r) for r in results],
        usage=Usage.of(prompt_tokens, completion_tokens(results)),
    )
