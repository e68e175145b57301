"""Fixtures of the language tests: engines over a scripted batch (scripted_engine.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
from scripted_engine import LetterModel, MakeEngine, ScriptedBatch, make_settings

from service.language.engine import GenerationEngine
from service.language.model import LanguageModel


@pytest.fixture
def make_engine() -> Iterator[MakeEngine]:
    started: list[tuple[GenerationEngine, ScriptedBatch]] = []

    def make(
        batch: ScriptedBatch | None = None, model: LetterModel | None = None, **settings: Any
    ) -> tuple[GenerationEngine, ScriptedBatch]:
        batch = batch or ScriptedBatch()
        engine = GenerationEngine(cast(LanguageModel, model or LetterModel()), make_settings(**settings), batch=batch)
        engine.start()
        started.append((engine, batch))
        return engine, batch

    yield make
    for engine, batch in started:
        batch.resume()
        engine.shutdown()
