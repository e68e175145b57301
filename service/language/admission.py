"""The admission bound: how many requests the engine holds at once, and when a refused one may retry.

A request is held from the moment it is accepted (queued, being prefilled, running, or waiting for a
next-token or scoring pass) to the moment it ends, so a burst cannot slip past the bound between two
steps. Past the bound a request is refused at once with `EngineOverloaded`, whose `retry_after_seconds`
says when a place should free: when the running generation nearest its end is done.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence

from service.language.exceptions import EngineOverloaded
from service.language.sequence import GenerationState
from service.language.stats import EngineStats


def estimate_retry_after(remaining_tokens: list[int], step_seconds: float) -> int:
    """Whole seconds (1 to 60) until the running generation nearest its end is done: `Retry-After` for a
    refused request, since that is when the admission bound has room again. With nothing running (the
    bound is full of queued work behind a long prefill), one step's time."""
    nearest = min(remaining_tokens, default=1)
    return max(1, min(60, math.ceil(max(0, nearest) * step_seconds)))


def tokens_until_a_place_frees(
    running: Sequence[GenerationState], waiting: Iterable[GenerationState], max_batch: int
) -> list[int]:
    """Tokens each running generation has left; with nothing running yet (a burst from idle, its first
    batch still being prefilled), the lengths of the queue's head, the first of which will free a place."""
    remaining = [seq.remaining_tokens for seq in running]
    if remaining:
        return remaining
    return [seq.params.max_new_tokens for seq in list(waiting)[:max_batch]]


class AdmissionBound:
    """Counts the requests held; `hold` takes a place or refuses, `unhold` / `release` give it back.

    Thread-safe: requests arrive on the event loop, places come back on the engine thread."""

    def __init__(self, limit: int, stats: EngineStats) -> None:
        self.limit = limit
        self._stats = stats
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    def hold(self, running: int, waiting: int, retry_after_seconds: Callable[[], int]) -> None:
        """Take a place, or raise `EngineOverloaded` (counted in `stats.refused`) when none is left.
        `running` and `waiting` only go into the message."""
        with self._lock:
            if self._held >= self.limit:
                self._stats.refused += 1
                retry_after = retry_after_seconds()
                raise EngineOverloaded(
                    f"the server is at capacity ({self._held} requests held: {running} running, "
                    f"{waiting} waiting, limit {self.limit}); retry in about {retry_after} s",
                    retry_after_seconds=retry_after,
                )
            self._held += 1
            self._stats.peak_held = max(self._stats.peak_held, self._held)

    def unhold(self) -> None:
        with self._lock:
            self._held -= 1

    def release(self, seq: GenerationState) -> None:
        """Give back a generation's place, once, whichever way it ended."""
        if not seq.released:
            seq.released = True
            self.unhold()
