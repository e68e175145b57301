"""`GET /metrics`: the Prometheus text exposition of this app's registry (open, like /health)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.observability.metrics import CONTENT_TYPE_LATEST, ServiceMetrics

router = APIRouter(tags=["system"])


@router.get(
    "/metrics",
    summary="Prometheus metrics (genai_*)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}},
)
async def metrics(request: Request) -> Response:
    service_metrics: ServiceMetrics = request.app.state.metrics
    service_metrics.ready.set(1 if request.app.state.ready else 0)
    return Response(service_metrics.render(), media_type=CONTENT_TYPE_LATEST)
