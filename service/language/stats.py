"""The generation engine's running totals: what `/info` shows (`describe`) and the metrics read.

Written on the engine thread, except `refused` and `peak_held`, which the admission bound updates under
its own lock on whichever thread a request arrives."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineStats:
    """Totals `/info` shows; the metrics take finer figures from the engine's listeners."""

    steps: int = 0
    generated_tokens: int = 0
    finished: int = 0
    draft_tokens: int = 0  # proposed by prompt lookup
    accepted_draft_tokens: int = 0  # of those, the ones greedy decoding chose too
    refused: int = 0  # requests answered "overloaded" (429)
    peak_held: int = 0  # the most requests ever held at once (never above the admission bound)
    step_seconds: float = 0.05  # moving average of one decode step's time
