"""Per-request context: the request id, and fields handlers add to the request's log line.

The request middleware opens a context for each request; any code running for that request (the
handler, a streaming generator it starts) can call `annotate(prompt_tokens=..., ...)` to put fields on
the one log line written when the response ends.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RequestContext:
    request_id: str
    fields: dict[str, Any] = field(default_factory=dict)
    prompt_text: str | None = None  # logged only when GENAI_LOG_PROMPTS is on


_current: ContextVar[RequestContext | None] = ContextVar("genai_request_context", default=None)


def current_context() -> RequestContext | None:
    return _current.get()


def current_request_id() -> str | None:
    ctx = _current.get()
    return ctx.request_id if ctx is not None else None


def annotate(**fields: Any) -> None:
    """Add fields (token counts, finish reason, model) to the current request's log line. No-op outside a request."""
    ctx = _current.get()
    if ctx is not None:
        ctx.fields.update({k: v for k, v in fields.items() if v is not None})


def add_usage(prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
    """Accumulate token counts on the current request's log line (several generations may share a request)."""
    ctx = _current.get()
    if ctx is not None:
        ctx.fields["prompt_tokens"] = int(ctx.fields.get("prompt_tokens", 0)) + prompt_tokens
        ctx.fields["completion_tokens"] = int(ctx.fields.get("completion_tokens", 0)) + completion_tokens


def note_prompt(text: str) -> None:
    """Remember the prompt text; the log line includes it only when GENAI_LOG_PROMPTS is set."""
    ctx = _current.get()
    if ctx is not None:
        ctx.prompt_text = text
