"""API keys: when GENAI_API_KEYS is set, model routes need `Authorization: Bearer <key>`.

The dependency is attached to the model routers (native language and digit endpoints, `/v1`, `/v2`
model routes) in `app.py`; `/health`, `/ready`, `/metrics`, `/v2/health/*`, the web page and the docs
stay open for probes and browsers. Keys are compared as SHA-256 digests with `hmac.compare_digest`,
against every configured key, so the time taken says nothing about a key's content or length.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.deps import SettingsDep
from service.errors import ServiceError

_bearer = HTTPBearer(auto_error=False, description="One of GENAI_API_KEYS (only when keys are configured).")


class Unauthorized(ServiceError):
    status_code = 401
    error_type = "authentication_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


def key_matches(given: str, keys: list[str]) -> bool:
    """Constant-time membership test: every key is compared, whatever matches."""
    given_digest = _digest(given)
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given_digest, _digest(key))
    return matched


async def require_api_key(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    keys = settings.api_keys
    if not keys:
        return
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized("missing API key: send the header `Authorization: Bearer <key>`")
    if not key_matches(credentials.credentials, keys):
        raise Unauthorized("invalid API key")


ApiKey = Depends(require_api_key)
"""Add to a router or route: `dependencies=[ApiKey]`."""
