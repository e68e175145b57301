"""Only the engine's thread runs torch in parallel, with GENAI_TORCH_THREADS (or the CPUs it may use)."""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable

import pytest
import torch
from fastapi import FastAPI

from service.app import load_models
from service.config import Settings
from service.language.engine import default_torch_threads


def test_the_default_follows_omp_num_threads_else_the_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_torch_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert 1 <= default_torch_threads() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize("threads", [1, 2])
async def test_the_engine_thread_runs_torch_with_the_configured_threads(
    make_app: Callable[[Settings], Awaitable[FastAPI]], settings: Settings, threads: int
) -> None:
    app = await make_app(settings.model_copy(update={"torch_threads": threads}))
    assert await app.state.models.engine.run_on_engine_thread(torch.get_num_threads) == threads


def test_the_loading_thread_is_left_running_torch_on_one_thread() -> None:
    seen: list[int] = []

    def load() -> None:
        torch.set_num_threads(2)
        load_models(Settings(load_language_model=False))
        seen.append(torch.get_num_threads())

    loader = threading.Thread(target=load)
    loader.start()
    loader.join()
    assert seen == [1]
