"""Prometheus metrics, named `genai_*`, in one registry per app (so several apps in one process never clash).

HTTP metrics are recorded by the request middleware; generation metrics by listeners on the engine
(called on the engine thread; prometheus-client is thread-safe); queue gauges and the engine's own
totals (prompt-lookup drafts) are read at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from service.language.engine import GenerationEngine
    from service.language.events import FinishEvent
    from service.state import LoadedModels

__all__ = ["CONTENT_TYPE_LATEST", "ServiceMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_TOKEN_COUNT_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)

_Listener = TypeVar("_Listener")


class ServiceMetrics:
    """Every metric the service exports. `bind(models)` hooks the engine in once the lifespan has started it."""

    def __init__(self) -> None:
        # the `*_created` series double the output and no dashboard reads them
        disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client leaves it unannotated
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # --- HTTP ---------------------------------------------------------------------------
        self.http_requests = Counter(
            "genai_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "genai_http_request_duration_seconds",
            "Time from request start to the end of the response (streams included).",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.http_in_progress = Gauge(
            "genai_http_requests_in_progress", "HTTP requests being served right now.", registry=r
        )
        # --- generation -----------------------------------------------------------------------
        self.ttft = Histogram(
            "genai_time_to_first_token_seconds",
            "From submission to the first generated token (queueing and prefill).",
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "genai_inter_token_latency_seconds",
            "Gap between consecutive generated tokens of one request.",
            buckets=_TOKEN_LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "genai_generation_duration_seconds",
            "From submission to the end of a generation.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "genai_generation_queue_seconds",
            "Time a generation waited for a place in the batch.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.generated_tokens = Counter("genai_generated_tokens", "Tokens generated.", registry=r)
        self.prompt_tokens = Counter("genai_prompt_tokens", "Prompt tokens prefilled for generations.", registry=r)
        self.generated_per_request = Histogram(
            "genai_generation_tokens_per_request",
            "Tokens generated per request.",
            buckets=_TOKEN_COUNT_BUCKETS,
            registry=r,
        )
        self.prompt_per_request = Histogram(
            "genai_prompt_tokens_per_request",
            "Prompt tokens per generation request.",
            buckets=_TOKEN_COUNT_BUCKETS,
            registry=r,
        )
        self.generations = Counter(
            "genai_generations",
            "Finished generations, by finish reason (eos, stop, length, time_limit, cancelled).",
            ["finish_reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "genai_batch_size", "Sequences decoded together per engine step.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.step_seconds = Histogram(
            "genai_engine_step_seconds",
            "Duration of one batched decode step.",
            buckets=_TOKEN_LATENCY_BUCKETS,
            registry=r,
        )
        self.running = Gauge("genai_requests_running", "Generations in the running batch.", registry=r)
        self.waiting = Gauge("genai_requests_waiting", "Generations queued for a place in the batch.", registry=r)
        self.held = Gauge(
            "genai_requests_held",
            "Requests the engine holds (queued, running, or waiting for a next-token pass); at most the admission bound.",
            registry=r,
        )
        # --- digits and models ---------------------------------------------------------------
        self.digit_predictions = Counter(
            "genai_digit_predictions",
            "Digit classifications served, by predicted digit and endpoint.",
            ["digit", "endpoint"],
            registry=r,
        )
        self.model_load_seconds = Gauge(
            "genai_model_load_seconds", "Time taken to load each model at start-up.", ["model"], registry=r
        )
        self.ready = Gauge("genai_ready", "1 when the models are loaded and the service accepts work.", registry=r)
        self._engine: GenerationEngine | None = None
        self.running.set_function(lambda: self._engine.running_count if self._engine is not None else 0)
        self.waiting.set_function(lambda: self._engine.waiting_count if self._engine is not None else 0)
        self.held.set_function(lambda: self._engine.held_count if self._engine is not None else 0)
        r.register(_EngineTotals(self))

    # ---- wiring ------------------------------------------------------------------------------

    def bind(self, models: LoadedModels) -> None:
        """Record load times and observe the engine the lifespan started."""
        for name, seconds in models.load_seconds.items():
            self.model_load_seconds.labels(model=name).set(seconds)
        engine = models.engine
        if engine is not None and engine is not self._engine:
            engine.step_listeners.append(self._on_step)
            engine.token_listeners.append(self._on_token)
            engine.finish_listeners.append(self._on_finish)
            self._engine = engine

    def unbind(self) -> None:
        engine, self._engine = self._engine, None
        if engine is None:
            return
        _remove_listener(engine.step_listeners, self._on_step)
        _remove_listener(engine.token_listeners, self._on_token)
        _remove_listener(engine.finish_listeners, self._on_finish)

    # ---- engine listeners (engine thread) --------------------------------------------------

    def _on_step(self, batch_size: int, seconds: float) -> None:
        self.batch_size.observe(batch_size)
        self.step_seconds.observe(seconds)

    def _on_token(self, gap: float | None) -> None:
        if gap is not None:
            self.inter_token.observe(gap)

    def _on_finish(self, event: FinishEvent) -> None:
        self.generations.labels(finish_reason=event.finish_reason).inc()
        self.generated_tokens.inc(event.completion_tokens)
        self.prompt_tokens.inc(event.prompt_tokens)
        self.generated_per_request.observe(event.completion_tokens)
        self.prompt_per_request.observe(event.prompt_tokens)
        self.e2e.observe(event.total_seconds)
        self.queue_time.observe(event.queue_seconds)
        if event.time_to_first_token_seconds is not None:
            self.ttft.observe(event.time_to_first_token_seconds)

    # ---- other recorders ---------------------------------------------------------------------

    def record_digits(self, digits: list[int], endpoint: str) -> None:
        for digit in digits:
            self.digit_predictions.labels(digit=str(int(digit)), endpoint=endpoint).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineTotals:
    """Totals the engine keeps itself, read at scrape time (nothing to record per step)."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily]:
        drafts = CounterMetricFamily(
            "genai_draft_tokens",
            "Prompt-lookup draft tokens checked; accepted = greedy decoding chose them too.",
            labels=["outcome"],
        )
        engine = self._metrics._engine
        if engine is not None:
            drafts.add_metric(["accepted"], engine.stats.accepted_draft_tokens)
            drafts.add_metric(["rejected"], engine.stats.draft_tokens - engine.stats.accepted_draft_tokens)
        yield drafts
        refused = CounterMetricFamily(
            "genai_requests_refused",
            "Requests refused with 429 because the admission bound (GENAI_MAX_BATCH_SIZE + GENAI_MAX_WAITING_REQUESTS) was reached.",
        )
        refused.add_metric([], engine.stats.refused if engine is not None else 0)
        yield refused


def _remove_listener(listeners: list[_Listener], listener: _Listener) -> None:
    """Take `listener` off an engine's list if it is there (a second unbind is harmless)."""
    if listener in listeners:
        listeners.remove(listener)
