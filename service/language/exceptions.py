"""What the model side raises when it cannot take a request. It knows nothing of HTTP:
the HTTP layer (`errors.py` at the package top) maps these to 4xx and 503 (with `Retry-After` where it helps)."""

from __future__ import annotations


class EngineOverloaded(RuntimeError):
    """The admission bound is reached; the request was not queued. `retry_after_seconds` estimates when
    room frees up, from the queue ahead and the recent time a generation takes."""

    def __init__(self, message: str, *, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class EngineNotReady(RuntimeError):
    """The engine is not running: starting, draining for shutdown, or stopped after a fatal error."""

    def __init__(self, message: str, *, retry_after_seconds: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class InvalidRequest(ValueError):
    """A request the model side cannot serve as asked (over a configured limit, outside the vocabulary, a
    chat that cannot be encoded safely). `field` is the caller's own name for what is wrong, so the
    protocol's error names the field its client sent; the HTTP layer maps it to 422 (400 under `/v1`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class TokenizerNotExplainable(InvalidRequest):
    """`explain` asked of a tokenizer the BPE replay cannot reproduce (WordLevel, Unigram, BPE with dropout,
    or a feature the replay does not model, found when its ids differ from the tokenizer's). A refusal of
    the request's `explain` field, so the HTTP layer answers it as it answers `InvalidRequest`: 422 naming it."""

    def __init__(self, message: str) -> None:
        super().__init__("explain", message)
