"""What the inspection side raises. It knows nothing of HTTP: `service/errors.py` maps these."""

from __future__ import annotations

from service.language.exceptions import InvalidRequest


class InspectionRefused(InvalidRequest):
    """An inspection request out of range or over a configured limit; `field` names the request's field.
    An `InvalidRequest`, so it is answered as every other refused field is (422 naming it)."""


class InspectionUnsupported(RuntimeError):
    """The loaded model lacks what an inspection needs (a final norm found by name, attention weights
    from its eager attention); the message says what. Answered 501: the request is fine, the model is not."""
