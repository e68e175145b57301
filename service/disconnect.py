"""Stop work for clients that have gone: a non-streaming request whose client disconnects is cancelled too.

Starlette does not cancel a handler when its client leaves, so the handler races its work against the
`http.disconnect` message (as vLLM's `with_cancellation` does). Cancelling the work task runs its
`finally` blocks, which cancel the engine request, so the batch slot is freed within one step.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

T = TypeVar("T")


class ClientDisconnected(Exception):
    pass


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it and raising ClientDisconnected if the client disconnects first."""
    work_task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({work_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if watcher not in done:  # when both finished in the same turn, the client is gone all the same
            return work_task.result()
        work_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await work_task
        raise ClientDisconnected
    finally:
        watcher.cancel()
        if not work_task.done():
            work_task.cancel()
