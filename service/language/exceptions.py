"""What the generation engine raises when it cannot take a request. It knows nothing of HTTP:
`service/errors.py` maps these to 429 and 503 with `Retry-After`."""

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
