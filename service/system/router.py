"""Liveness, readiness and what is loaded."""

from __future__ import annotations

import contextlib
import platform

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service import __version__
from service.deps import AppStateDep, ModelsDep, SettingsDep
from service.errors import error_body
from service.system.schemas import HealthResponse, InfoResponse, ReadyResponse

router = APIRouter(tags=["system"])


@router.get(
    "/health",
    response_model=HealthResponse,
    summary="Liveness: the process is up",
    description="`HEAD /health` answers the same status and headers without a body (for uptime checkers).",
)
async def health() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get(
    "/ready",
    response_model=ReadyResponse,
    summary="Readiness: models loaded and accepting work",
    description="`HEAD /ready` answers the same status and headers without a body.",
    responses={503: {"description": "Still loading, or shutting down"}},
)
async def ready(state: AppStateDep, models: ModelsDep) -> ReadyResponse | JSONResponse:
    loaded = {"language": models.language is not None, "digits": models.digits is not None}
    engine_ok = models.engine is None or models.engine.is_running
    if not state.ready or not engine_ok:
        return JSONResponse(
            error_body("not ready: loading models or shutting down", error_type="not_ready", code=503), status_code=503
        )
    return ReadyResponse(status="ready", models=loaded)


# HEAD answers as GET does, without a body (the server sends the headers only); kept out of the schema,
# where the GET operations say so.
router.add_api_route(
    "/health", health, methods=["HEAD"], response_model=HealthResponse, include_in_schema=False, name="health_head"
)
router.add_api_route(
    "/ready", ready, methods=["HEAD"], response_model=ReadyResponse, include_in_schema=False, name="ready_head"
)


def _library_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version(), "genai-service": __version__}
    for name in ("torch", "transformers", "fastapi", "scikit-learn", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


@router.get("/info", response_model=InfoResponse, summary="Loaded models, device, limits and versions")
async def info(models: ModelsDep, settings: SettingsDep) -> InfoResponse:
    digit_info = models.digits.describe() if models.digits is not None else None
    return InfoResponse(
        service={"name": "genai-service", "versions": _library_versions()},
        language_model=models.language.describe() if models.language is not None else None,
        digit_model=digit_info,
        engine=models.engine.describe() if models.engine is not None else None,
        limits={
            "max_prompt_tokens": min(settings.max_prompt_tokens, models.language.context_length)
            if models.language is not None
            else settings.max_prompt_tokens,
            "max_new_tokens": settings.max_new_tokens,
            "max_top_k": settings.max_top_k,
            "max_top_alternatives": settings.max_top_alternatives,
            "max_stop_sequences": settings.max_stop_sequences,
            "max_text_chars": settings.max_text_chars,
            "max_body_bytes": settings.max_body_bytes,
            "max_batch_size": settings.max_batch_size,
            "max_running_requests": settings.max_running_requests,
            "max_waiting_requests": settings.max_waiting_requests,
            "request_timeout_s": settings.request_timeout_s,
            "digits_max_batch": settings.digits_max_batch,
            "digits_max_image_bytes": settings.digits_max_image_bytes,
            "digits_max_image_pixels": settings.digits_max_image_pixels,
        },
        settings=settings.public_view(),
    )
