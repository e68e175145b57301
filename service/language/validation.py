"""Checks of requests against the configured limits and the loaded model, before anything is queued.

The limits depend on settings and on the model (its context length, its vocabulary), so they live
here rather than in the static schemas. Every protocol's request schema builds its engine parameters
and hands them to `SamplingLimits.check`, the one place the limits are enforced, with its own field
names: each failure is an `InvalidRequest` naming the caller's field and the limit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.config import Settings
from service.language.chat import ChatContentError, ContinuationError, encode_chat
from service.language.exceptions import InvalidRequest
from service.language.grammar import Constraint, ConstraintKind
from service.language.model import LanguageModel
from service.language.sampling import SamplingParams
from service.schemas import MAX_LOGIT_BIAS_ENTRIES

FieldNames = Mapping[str, str]
"""A protocol's names for `SamplingParams` fields where they differ (`max_new_tokens` -> `max_tokens`)."""


@dataclass(frozen=True)
class DistributionParams:
    """What `/next-token-probs` asks of the engine: the candidates to return and the softmax temperature;
    with `explain`, also the sampler's stages under these settings (`sample_top_k` is /generate's `top_k`)."""

    top_k: int
    temperature: float
    explain: bool = False
    sample_top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    min_p: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def sampler(self) -> SamplingParams | None:
        """The sampling settings whose stages to show, or None when not asked."""
        if not self.explain:
            return None
        return SamplingParams(
            do_sample=True,
            temperature=self.temperature,
            top_k=self.sample_top_k,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            min_p=self.min_p,
            logit_bias=self.logit_bias,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
        )


def logit_bias_entries(bias: Mapping[str, float] | None, field: str = "logit_bias") -> tuple[tuple[int, float], ...]:
    """A request's `logit_bias` map (JSON keys are strings: token ids in decimal) as (id, bias) pairs in id
    order; a key that is not a token id is an InvalidRequest naming `field`. The ids are checked against the
    vocabulary, and their number against MAX_LOGIT_BIAS_ENTRIES, by `SamplingLimits.check`."""
    entries: dict[int, float] = {}
    for key, value in (bias or {}).items():
        text = key.strip()
        if not (text.isascii() and text.lstrip("-").isdigit()):
            raise InvalidRequest(field, f"{field} key {key!r} is not a token id (a decimal integer)")
        token_id = int(text)
        if token_id in entries:
            raise InvalidRequest(field, f"{field} names token {token_id} twice")
        entries[token_id] = float(value)
    return tuple(sorted(entries.items()))


@dataclass(frozen=True)
class SamplingLimits:
    """The bounds one prompt's parameters must keep: the configured caps (`GENAI_MAX_*`) and the model's sizes."""

    max_new_tokens: int
    default_max_new_tokens: int
    context_length: int
    prompt_tokens: int
    max_top_alternatives: int
    max_top_k: int
    max_stop_sequences: int
    max_text_chars: int
    request_timeout_s: float
    vocab_size: int

    @classmethod
    def of(cls, lm: LanguageModel, settings: Settings, prompt_tokens: int = 0) -> SamplingLimits:
        return cls(
            max_new_tokens=settings.max_new_tokens,
            default_max_new_tokens=settings.default_max_new_tokens,
            context_length=lm.context_length,
            prompt_tokens=prompt_tokens,
            max_top_alternatives=min(settings.max_top_alternatives, lm.vocab_size),
            max_top_k=min(settings.max_top_k, lm.vocab_size),
            max_stop_sequences=settings.max_stop_sequences,
            max_text_chars=settings.max_text_chars,
            request_timeout_s=settings.request_timeout_s,
            vocab_size=lm.vocab_size,
        )

    def fit(self, default_max_new_tokens: int) -> int:
        """A default length (not a request, so never refused): what the context leaves, at least one token."""
        return max(1, min(default_max_new_tokens, self.context_length - self.prompt_tokens))

    def check(self, params: SamplingParams, names: FieldNames | None = None) -> SamplingParams:
        """`params` if they keep every limit; else InvalidRequest naming the caller's field (`names`)."""
        names = names or {}

        def name(key: str) -> str:
            return names.get(key, key)

        max_new = name("max_new_tokens")
        if params.max_new_tokens > self.max_new_tokens:
            raise InvalidRequest(
                max_new,
                f"{max_new} = {params.max_new_tokens} exceeds the limit of {self.max_new_tokens} (GENAI_MAX_NEW_TOKENS)",
            )
        if self.prompt_tokens + params.max_new_tokens > self.context_length:
            raise InvalidRequest(
                max_new,
                f"prompt tokens ({self.prompt_tokens}) + {max_new} ({params.max_new_tokens}) exceed the model's context of {self.context_length}",
            )
        if params.top_alternatives > self.max_top_alternatives:
            alternatives = name("top_alternatives")
            raise InvalidRequest(
                alternatives,
                f"{alternatives} = {params.top_alternatives} exceeds the limit of {self.max_top_alternatives} (GENAI_MAX_TOP_ALTERNATIVES)",
            )
        stop = name("stop")
        if len(params.stop) > self.max_stop_sequences:
            raise InvalidRequest(
                stop,
                f"{len(params.stop)} stop strings given; the limit is {self.max_stop_sequences} (GENAI_MAX_STOP_SEQUENCES)",
            )
        for text in params.stop:
            _check_length(text, self.max_text_chars, stop)
        if params.timeout_s is not None and params.timeout_s > self.request_timeout_s:
            timeout = name("timeout_s")
            raise InvalidRequest(
                timeout,
                f"{timeout} = {params.timeout_s} exceeds the limit of {self.request_timeout_s} (GENAI_REQUEST_TIMEOUT_S)",
            )
        self.check_logit_bias(params.logit_bias, name("logit_bias"))
        return params

    def check_logit_bias(self, bias: tuple[tuple[int, float], ...], field: str = "logit_bias") -> None:
        """At most MAX_LOGIT_BIAS_ENTRIES ids, each in the vocabulary; else InvalidRequest naming `field`."""
        if len(bias) > MAX_LOGIT_BIAS_ENTRIES:
            raise InvalidRequest(
                field, f"{field} has {len(bias)} entries; the limit is {MAX_LOGIT_BIAS_ENTRIES} token ids"
            )
        for token_id, _ in bias:
            if not 0 <= token_id < self.vocab_size:
                raise InvalidRequest(
                    field, f"{field} names token {token_id}, outside the vocabulary [0, {self.vocab_size})"
                )

    def check_distribution(self, params: DistributionParams, names: FieldNames | None = None) -> DistributionParams:
        field = (names or {}).get("top_k", "top_k")
        if params.top_k > self.max_top_k:
            raise InvalidRequest(
                field, f"{field} = {params.top_k} exceeds the limit of {self.max_top_k} (GENAI_MAX_TOP_K)"
            )
        if params.explain and params.top_k > self.max_top_alternatives:
            raise InvalidRequest(
                field,
                f"with explain, {field} = {params.top_k} candidates per stage exceeds the limit of {self.max_top_alternatives} (GENAI_MAX_TOP_ALTERNATIVES)",
            )
        if not params.explain:
            for key, value, default in (
                ("sample_top_k", params.sample_top_k, 0),
                ("top_p", params.top_p, 1.0),
                ("repetition_penalty", params.repetition_penalty, 1.0),
                ("min_p", params.min_p, 0.0),
                ("logit_bias", params.logit_bias, ()),
                ("presence_penalty", params.presence_penalty, 0.0),
                ("frequency_penalty", params.frequency_penalty, 0.0),
            ):
                if value != default:
                    name = (names or {}).get(key, key)
                    raise InvalidRequest(
                        name, f"{name} only shapes the sampler's stages: ask for them with explain: true"
                    )
        self.check_logit_bias(params.logit_bias, (names or {}).get("logit_bias", "logit_bias"))
        return params


def one_constraint(given: Sequence[tuple[str, ConstraintKind, object]], max_text_chars: int) -> Constraint | None:
    """The structured-output constraint among a request's `(field, kind, value)` candidates whose value is
    not None: at most one (else InvalidRequest naming the second), a regex or the choices within
    GENAI_MAX_TEXT_CHARS. A JSON schema is a dict (its size bound is the body's); a choice a list of strings."""
    present = [(field, kind, value) for field, kind, value in given if value is not None]
    if not present:
        return None
    if len(present) > 1:
        names = ", ".join(f"`{field}`" for field, _, _ in present)
        raise InvalidRequest(present[1][0], f"give at most one constraint; this request gives {names}")
    field, kind, value = present[0]
    if kind == "json_schema":
        return Constraint.json_schema(value, field)
    if kind == "regex":
        assert isinstance(value, str)
        _check_length(value, max_text_chars, field)
        return Constraint("regex", value, field)
    assert isinstance(value, list)
    choices = tuple(str(choice) for choice in value)
    if "" in choices:
        raise InvalidRequest(field, f"{field}: a choice must not be empty")
    _check_length("".join(choices), max_text_chars, field)
    return Constraint("choice", choices, field)


def _check_length(text: str, limit: int, field: str) -> None:
    if len(text) > limit:
        raise InvalidRequest(field, f"{field} has {len(text)} characters; the limit is {limit} (GENAI_MAX_TEXT_CHARS)")


def check_text_length(text: str, settings: Settings, field: str) -> None:
    _check_length(text, settings.max_text_chars, field)


def prompt_token_limit(lm: LanguageModel, settings: Settings) -> int:
    return min(settings.max_prompt_tokens, lm.context_length - 1)


def encode_messages(
    lm: LanguageModel,
    settings: Settings,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    tools: list[dict[str, Any]] | None = None,
) -> tuple[str, list[int]]:
    """Render a chat (`role` and `content` of each message, and what else the template reads of it:
    `tool_calls`, `tool_call_id`) with the model's template and tokenize it (contents as plain text, see
    chat.py), enforcing the prompt limits. Returns the rendered text and its ids. `continue_final_message`
    leaves the last message open for the model to continue; `tools` go to a template with a tools section."""
    try:
        text, ids = encode_chat(
            lm,
            [dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tools=tools,
        )
    except ChatContentError as exc:
        raise InvalidRequest(f"messages.{exc.index}.content", f"messages[{exc.index}].content {exc}") from exc
    except ContinuationError as exc:
        raise InvalidRequest("continue_final_message", str(exc)) from exc
    except ValueError as exc:  # no chat template
        raise InvalidRequest("messages", str(exc)) from exc
    check_text_length(text, settings, "messages")
    check_prompt_ids(ids, lm, settings, "messages")
    return text, ids


def encode_prompt(
    lm: LanguageModel,
    settings: Settings,
    *,
    prompt: str,
    add_special_tokens: bool = False,
    parse_special: bool = True,
    field: str = "prompt",
) -> list[int]:
    """Tokenize a raw prompt, enforcing the prompt limits."""
    check_text_length(prompt, settings, field)
    ids = lm.encode(prompt, add_special_tokens=add_special_tokens, parse_special=parse_special)
    check_prompt_ids(ids, lm, settings, field)
    return ids


def check_prompt_ids(ids: list[int], lm: LanguageModel, settings: Settings, field: str) -> None:
    """A prompt's ids: not empty and within the prompt limit (ids a client sent: `check_token_ids` first)."""
    if not ids:
        raise InvalidRequest(field, f"{field} gives no tokens")
    limit = prompt_token_limit(lm, settings)
    if len(ids) > limit:
        raise InvalidRequest(
            field,
            f"{field} has {len(ids)} tokens; the limit is {limit} "
            f"(the smaller of GENAI_MAX_PROMPT_TOKENS and the model's context of {lm.context_length} minus one)",
        )


def check_token_ids(lm: LanguageModel, ids: list[int], field: str = "ids") -> None:
    vocab = lm.vocab_size
    for position, token_id in enumerate(ids):
        if not 0 <= token_id < vocab:
            raise InvalidRequest(field, f"{field}[{position}] = {token_id} is outside the vocabulary [0, {vocab})")
