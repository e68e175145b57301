"""`GET /metrics`: the Prometheus text exposition of this app's registry (open, like /health)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.deps import AppStateDep
from service.observability.metrics import CONTENT_TYPE_LATEST

router = APIRouter(tags=["system"])


@router.get(
    "/metrics",
    summary="Prometheus metrics (genai_*)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}},
)
async def metrics(state: AppStateDep) -> Response:
    service_metrics = state.metrics
    service_metrics.ready.set(1 if state.ready else 0)
    return Response(service_metrics.render(), media_type=CONTENT_TYPE_LATEST)
