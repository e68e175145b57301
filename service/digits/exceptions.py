"""What the digit side raises about a client's input; `service.errors` maps each to its HTTP answer.

`DigitInputError` is an input that cannot be classified (422 naming the field, 413 when `too_large`);
`DigitRequestInvalid` is a JSON body that does not parse or fails its schema (answered exactly as
FastAPI's own request validation errors). Neither knows about HTTP.
"""

from __future__ import annotations

from typing import Any


class DigitInputError(ValueError):
    """Input that cannot be classified; `param` names the field, `too_large` asks for a 413."""

    def __init__(self, message: str, *, param: str | None = None, too_large: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.too_large = too_large


class DigitRequestInvalid(ValueError):
    """A request body that is not JSON or does not match its schema.

    `errors` are pydantic-style error dicts whose `loc` starts at `"body"`, the shape FastAPI's request
    validation uses, so these answers look like every other route's.
    """

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"invalid request body ({len(errors)} problem{'s' if len(errors) != 1 else ''})")
        self.errors = errors
