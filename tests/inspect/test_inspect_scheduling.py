"""Inspections share the engine thread with generation one at a time, in pieces (scheduling.py).

The queue's rules over a stand-in engine thread (one worker thread): one inspection's pieces at a time,
in arrival order, a bounded wait, one admission place per turn, a cancelled caller stopping after its
running piece. test_inspect_fairness_http.py holds them over the real engine and real HTTP. Ordering and
progress are asserted, never durations."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from service.inspect.scheduling import InspectionQueue, InspectionQueues, Passes
from service.language.exceptions import EngineOverloaded

T = TypeVar("T")


class WorkerThread:
    """A stand-in for the engine: every call runs on one worker thread, in the order queued."""

    def __init__(self) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.held = 0  # admission places held now
        self.unheld_calls = 0  # calls made without a held place

    async def run_on_engine_thread(self, fn: Callable[..., T], *args: Any, held: bool = False) -> T:
        self.unheld_calls += not held
        return await asyncio.wrap_future(self.pool.submit(fn, *args))

    def hold_place(self) -> None:
        self.held += 1

    def release_place(self) -> None:
        self.held -= 1


@pytest.fixture
def worker() -> Iterator[WorkerThread]:
    thread = WorkerThread()
    yield thread
    thread.pool.shutdown(wait=True)


def pieces(name: str, count: int, log: list[str], gate: threading.Event | None = None) -> Passes[str]:
    """An inspection of `count` pieces that logs each; the first waits for `gate` when given."""
    for piece in range(count):
        if piece:
            yield  # between pieces
        if piece == 0 and gate is not None:
            assert gate.wait(10)
        log.append(f"{name}{piece}")
    return name


async def test_one_inspection_at_a_time_in_arrival_order(worker: WorkerThread) -> None:
    queue, log = InspectionQueue(worker, max_waiting=8), list[str]()
    results = await asyncio.gather(*(queue.run(pieces(name, 3, log)) for name in "abc"))
    assert results == ["a", "b", "c"]
    assert log == ["a0", "a1", "a2", "b0", "b1", "b2", "c0", "c1", "c2"]  # never two inspections' pieces mixed
    assert queue.pieces == 9 and queue.waiting == 0
    assert worker.held == 0 and worker.unheld_calls == 0  # each turn held its one place, and gave it back


async def test_past_the_waiting_bound_an_inspection_is_refused_with_a_retry_time(worker: WorkerThread) -> None:
    queue, log, gate = InspectionQueue(worker, max_waiting=1), list[str](), threading.Event()
    running = asyncio.create_task(queue.run(pieces("a", 2, log, gate)))
    await asyncio.sleep(0)  # a takes the turn and queues its first piece, which waits for the gate
    waiting = asyncio.create_task(queue.run(pieces("b", 1, log)))
    await asyncio.sleep(0)
    assert queue.waiting == 1
    with pytest.raises(EngineOverloaded) as refused:
        await queue.run(pieces("c", 1, log))
    assert refused.value.retry_after_seconds >= 1
    assert "GENAI_MAX_WAITING_REQUESTS" in str(refused.value)
    gate.set()
    assert list(await asyncio.gather(running, waiting)) == ["a", "b"]
    assert log == ["a0", "a1", "b0"]  # c never ran
    assert await queue.run(pieces("d", 1, log)) == "d"  # room again


async def test_a_cancelled_inspection_stops_after_its_running_piece(worker: WorkerThread) -> None:
    queue, log, gate = InspectionQueue(worker, max_waiting=8), list[str](), threading.Event()
    started = threading.Event()

    def slow_first() -> Passes[str]:
        started.set()
        assert gate.wait(10)
        log.append("a0 done")
        yield
        log.append("a1")  # never: the caller is gone before it
        return "a"

    cancelled = asyncio.create_task(queue.run(slow_first()))
    assert await asyncio.to_thread(started.wait, 10)  # a's first piece runs on the worker
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    following = asyncio.create_task(queue.run(pieces("b", 1, log)))
    await asyncio.sleep(0.05)
    assert log == []  # b waits: a's piece is still on the engine thread
    gate.set()
    assert await following == "b"
    assert log == ["a0 done", "b0"]  # b started after a's piece ended; a ran no further piece


async def test_a_failing_piece_fails_its_inspection_only(worker: WorkerThread) -> None:
    queue, log = InspectionQueue(worker, max_waiting=8), list[str]()

    def failing() -> Passes[str]:
        yield
        raise ValueError("the model failed")

    with pytest.raises(ValueError, match="the model failed"):
        await queue.run(failing())
    assert await queue.run(pieces("b", 2, log)) == "b"


async def test_each_event_loop_gets_its_own_queue(worker: WorkerThread) -> None:
    queues = InspectionQueues()
    queue = queues.of(worker, 3)
    assert queues.of(worker, 3) is queue
    other = await asyncio.to_thread(lambda: asyncio.run(_queue_in_new_loop(queues, worker)))
    assert other is not queue


async def _queue_in_new_loop(queues: InspectionQueues, worker: WorkerThread) -> InspectionQueue:
    return queues.of(worker, 3)
