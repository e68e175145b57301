"""How inspections share the engine thread with generation: one inspection at a time, in pieces.

An inspection is a generator of model work (`Passes`): each `next()` does one bounded piece (the forward
pass over the prompt, the lens of one position, one chunk of a tree level) and the generator yields
between pieces; its return value is the result. Each piece is its own call on the engine thread, and
only one inspection has a piece queued or running at a time, so the engine runs at most one piece of
inspection work between two decode steps: a streaming generation keeps advancing a token per step
however many inspections are queued, and a queue of inspections holds one of the engine's admission
places, not one each, so it does not crowd generations out.

The others wait here, in arrival order, at most `max_waiting` of them (GENAI_MAX_WAITING_REQUESTS);
one more is refused at once with `EngineOverloaded` (429 with `Retry-After`). A caller that is cancelled
(its client went away) stops its inspection after the piece running now; that piece still finishes on
the engine thread before the next inspection's first piece is queued.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Protocol, TypeVar

import torch

from service.language.exceptions import EngineOverloaded

T = TypeVar("T")

Passes = Generator[None, None, T]  # yields between pieces of model work; returns the inspection's result


class EngineThread(Protocol):
    """What the queue needs of the engine: a call on its thread between two steps, and one admission
    place held across an inspection's calls."""

    def run_on_engine_thread(self, fn: Callable[..., T], *args: Any, held: bool = False) -> Coroutine[Any, Any, T]: ...

    def hold_place(self) -> None: ...

    def release_place(self) -> None: ...


def advance(work: Passes[T]) -> tuple[bool, T | None]:
    """Run the next piece of `work` (on the engine thread): (True, result) once it has returned."""
    with torch.inference_mode():
        try:
            next(work)
        except StopIteration as stop:
            return True, stop.value
    return False, None


def run_to_end(work: Passes[T]) -> T:
    """Every piece of `work` at once, on the calling thread (for direct use and tests)."""
    while True:
        done, result = advance(work)
        if done:
            return result  # type: ignore[return-value]  # T itself may be None


class InspectionQueue:
    """One inspection on the engine at a time, the rest waiting in arrival order, at most `max_waiting`."""

    def __init__(self, engine: EngineThread, max_waiting: int) -> None:
        self.engine = engine
        self.max_waiting = max_waiting
        self.waiting = 0  # inspections waiting for their turn (not the one on the engine)
        self.pieces = 0  # pieces run, all inspections together
        self._lock = asyncio.Lock()
        self._seconds = 1.0  # a recent inspection's duration, for Retry-After

    def retry_after_seconds(self) -> int:
        """Whole seconds (1 to 60) until the queue has room: the inspections ahead at a recent one's time."""
        return max(1, min(60, math.ceil(max(1, self.waiting) * self._seconds)))

    async def run(self, work: Passes[T]) -> T:
        """Wait for this inspection's turn, then run its pieces one engine call each; its result."""
        if self.waiting >= self.max_waiting and self._lock.locked():
            retry_after = self.retry_after_seconds()
            raise EngineOverloaded(
                f"{self.waiting} inspections are already waiting for the model (at most {self.max_waiting}, "
                f"GENAI_MAX_WAITING_REQUESTS); retry after {retry_after} s",
                retry_after_seconds=retry_after,
            )
        self.waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self.waiting -= 1
        try:
            self.engine.hold_place()  # one place for the whole turn: no piece is refused half-way
        except BaseException:
            self._lock.release()
            raise
        started = time.monotonic()
        piece: asyncio.Future[tuple[bool, T | None]] | None = None
        try:
            while True:
                piece = asyncio.ensure_future(self.engine.run_on_engine_thread(advance, work, held=True))
                # Shielded: cancelling this caller must not cancel a piece the engine may be running.
                done, result = await asyncio.shield(piece)
                self.pieces += 1
                if done:
                    self._seconds = 0.5 * self._seconds + 0.5 * (time.monotonic() - started)
                    return result  # type: ignore[return-value]  # T itself may be None
        finally:
            if piece is not None and not piece.done():  # cancelled mid-piece: the next turn starts after it
                piece.add_done_callback(self._release_after)
            else:
                self._release()

    def _release_after(self, piece: asyncio.Future[Any]) -> None:
        if not piece.cancelled():
            piece.exception()  # retrieved, so asyncio does not log it as never retrieved
        self._release()

    def _release(self) -> None:
        self.engine.release_place()
        self._lock.release()


class InspectionQueues:
    """The inspection queue of each engine, one per event loop that serves it (asyncio's lock belongs to
    one loop; an app serves from one, tests from several). Kept on the app's state."""

    def __init__(self) -> None:
        self._by_engine: weakref.WeakKeyDictionary[Any, dict[asyncio.AbstractEventLoop, InspectionQueue]] = (
            weakref.WeakKeyDictionary()
        )

    def of(self, engine: EngineThread, max_waiting: int) -> InspectionQueue:
        """`engine`'s queue for the running loop, made on first use."""
        loop = asyncio.get_running_loop()
        by_loop = self._by_engine.setdefault(engine, {})
        queue = by_loop.get(loop)
        if queue is None:
            queue = by_loop[loop] = InspectionQueue(engine, max_waiting)
        return queue
