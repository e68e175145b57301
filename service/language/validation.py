"""Checks of requests against the configured limits and the loaded model, before anything is queued.

The limits depend on settings and on the model (its context length, its vocabulary), so they live
here rather than in the static schemas. Each failure names the field and the limit.
"""

from __future__ import annotations

from service.config import Settings
from service.errors import InvalidInput
from service.language.chat import ChatContentError, encode_chat
from service.language.model import LanguageModel
from service.language.sampling import SamplingParams
from service.language.schemas import ChatMessage, GenerateRequest


def check_text_length(text: str, settings: Settings, field: str) -> None:
    if len(text) > settings.max_text_chars:
        raise InvalidInput(
            f"{field} has {len(text)} characters; the limit is {settings.max_text_chars} (GENAI_MAX_TEXT_CHARS)", param=field
        )


def prompt_token_limit(lm: LanguageModel, settings: Settings) -> int:
    return min(settings.max_prompt_tokens, lm.context_length - 1)


def encode_messages(lm: LanguageModel, settings: Settings, messages: list[ChatMessage]) -> tuple[str, list[int]]:
    """Render a chat with the model's template and tokenize it (contents as plain text, see chat.py),
    enforcing the prompt limits. Returns the rendered text and its ids."""
    try:
        text, ids = encode_chat(lm, [m.model_dump() for m in messages])
    except ChatContentError as exc:
        raise InvalidInput(f"messages[{exc.index}].content {exc}", param=f"messages.{exc.index}.content") from exc
    except ValueError as exc:  # no chat template
        raise InvalidInput(str(exc), param="messages") from exc
    check_text_length(text, settings, "messages")
    _check_prompt_ids(ids, lm, settings, "messages")
    return text, ids


def encode_prompt(
    lm: LanguageModel,
    settings: Settings,
    *,
    prompt: str | None,
    messages: list[ChatMessage] | None = None,
    add_special_tokens: bool = False,
    parse_special: bool = True,
    field: str = "prompt",
) -> list[int]:
    """Tokenize a prompt (or render and tokenize a chat), enforcing the prompt limits."""
    if messages is not None:
        return encode_messages(lm, settings, messages)[1]
    text = prompt or ""
    check_text_length(text, settings, field)
    ids = lm.encode(text, add_special_tokens=add_special_tokens, parse_special=parse_special)
    _check_prompt_ids(ids, lm, settings, field)
    return ids


def _check_prompt_ids(ids: list[int], lm: LanguageModel, settings: Settings, field: str) -> None:
    if not ids:
        raise InvalidInput(f"{field} gives no tokens", param=field)
    limit = prompt_token_limit(lm, settings)
    if len(ids) > limit:
        raise InvalidInput(
            f"{field} has {len(ids)} tokens; the limit is {limit} "
            f"(the smaller of GENAI_MAX_PROMPT_TOKENS and the model's context of {lm.context_length} minus one)",
            param=field,
        )


def check_token_ids(lm: LanguageModel, ids: list[int], field: str = "ids") -> None:
    vocab = lm.vocab_size
    for position, token_id in enumerate(ids):
        if not 0 <= token_id < vocab:
            raise InvalidInput(f"{field}[{position}] = {token_id} is outside the vocabulary [0, {vocab})", param=field)


def check_top_k(top_k: int, lm: LanguageModel, settings: Settings, field: str = "top_k") -> None:
    limit = min(settings.max_top_k, lm.vocab_size)
    if top_k > limit:
        raise InvalidInput(f"{field} = {top_k} exceeds the limit of {limit} (GENAI_MAX_TOP_K)", param=field)


def sampling_params(request: GenerateRequest, prompt_tokens: int, lm: LanguageModel, settings: Settings) -> SamplingParams:
    """Turn a validated request into engine parameters, enforcing the limits that depend on settings and model."""
    if request.max_new_tokens > settings.max_new_tokens:
        raise InvalidInput(
            f"max_new_tokens = {request.max_new_tokens} exceeds the limit of {settings.max_new_tokens} (GENAI_MAX_NEW_TOKENS)",
            param="max_new_tokens",
        )
    if prompt_tokens + request.max_new_tokens > lm.context_length:
        raise InvalidInput(
            f"prompt tokens ({prompt_tokens}) + max_new_tokens ({request.max_new_tokens}) exceed the model's context of {lm.context_length}",
            param="max_new_tokens",
        )
    if request.top_alternatives > min(settings.max_top_alternatives, lm.vocab_size):
        raise InvalidInput(
            f"top_alternatives = {request.top_alternatives} exceeds the limit of {settings.max_top_alternatives} (GENAI_MAX_TOP_ALTERNATIVES)",
            param="top_alternatives",
        )
    stop = tuple(request.stop or ())
    if len(stop) > settings.max_stop_sequences:
        raise InvalidInput(
            f"{len(stop)} stop strings given; the limit is {settings.max_stop_sequences} (GENAI_MAX_STOP_SEQUENCES)", param="stop"
        )
    for text in stop:
        check_text_length(text, settings, "stop")
    if request.timeout_s is not None and request.timeout_s > settings.request_timeout_s:
        raise InvalidInput(
            f"timeout_s = {request.timeout_s} exceeds the limit of {settings.request_timeout_s} (GENAI_REQUEST_TIMEOUT_S)",
            param="timeout_s",
        )
    return SamplingParams(
        max_new_tokens=request.max_new_tokens,
        do_sample=request.do_sample and request.temperature > 0,
        temperature=request.temperature,
        top_k=request.top_k,
        top_p=request.top_p,
        repetition_penalty=request.repetition_penalty,
        seed=request.seed,
        stop=stop,
        ignore_eos=request.ignore_eos,
        top_alternatives=request.top_alternatives,
        timeout_s=request.timeout_s,
    )
