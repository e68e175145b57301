"""Observability: Prometheus metrics, request ids, structured request logs."""

from service.observability.context import add_usage, annotate, current_request_id, note_prompt
from service.observability.metrics import ServiceMetrics

__all__ = ["ServiceMetrics", "add_usage", "annotate", "current_request_id", "note_prompt"]
