"""Per-model inference statistics as the Triton / KServe statistics extension reports them
(`GET /v2/models[/{name}[/versions/{version}]]/stats`), counted over the inferences served through `/v2`.

What Triton counts, here: `inference_count` the images classified (a batch of N counts N),
`execution_count` the model runs (one per request), `last_inference` in milliseconds since the epoch;
per phase a count and the nanoseconds spent: `success` (whole successful requests, from the body read
to the response built), `fail` (requests refused or failed), `queue` (0: there is no queue in front of
the digit model, a request runs at once in a worker thread), `compute_input` (decoding the tensors),
`compute_infer` (the forward pass), `compute_output` (encoding the outputs); `batch_stats` the same
compute phases per batch size. There is no response cache, so `cache_hit` and `cache_miss` stay 0, and
no per-response statistics (decoupled models) or memory accounting: those are empty.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ComputeDurations:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStatistics:
    """One model version's counters; `record_success` and `record_failure` may be called from any thread."""

    name: str
    version: str
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute: ComputeDurations = field(default_factory=ComputeDurations)
    batches: dict[int, ComputeDurations] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_success(self, batch_size: int, total_ns: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        with self._lock:
            self.inference_count += batch_size
            self.execution_count += 1
            self.last_inference_ms = time.time_ns() // 1_000_000
            self.success.add(total_ns)
            self.queue.add(0)
            batch = self.batches.setdefault(batch_size, ComputeDurations())
            for phases in (self.compute, batch):
                phases.compute_input.add(input_ns)
                phases.compute_infer.add(infer_ns)
                phases.compute_output.add(output_ns)

    def record_failure(self, total_ns: int) -> None:
        with self._lock:
            self.fail.add(total_ns)

    def to_json(self) -> dict[str, Any]:
        """The statistics extension's `$model_stat` object."""
        with self._lock:
            return {
                "name": self.name,
                "version": self.version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": self.success.to_json(),
                    "fail": self.fail.to_json(),
                    "queue": self.queue.to_json(),
                    "compute_input": self.compute.compute_input.to_json(),
                    "compute_infer": self.compute.compute_infer.to_json(),
                    "compute_output": self.compute.compute_output.to_json(),
                    "cache_hit": Duration().to_json(),
                    "cache_miss": Duration().to_json(),
                },
                "response_stats": {},
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": phases.compute_input.to_json(),
                        "compute_infer": phases.compute_infer.to_json(),
                        "compute_output": phases.compute_output.to_json(),
                    }
                    for size, phases in sorted(self.batches.items())
                ],
                "memory_usage": [],
            }
