"""Fixtures of the language tests: engines over a scripted batch (scripted_engine.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
from scripted_engine import LetterModel, MakeEngine, ScriptedBatch, make_settings

from service.language.engine import GenerationEngine
from service.language.grammar import GrammarBackend
from service.language.model import LanguageModel


@pytest.fixture
def make_engine() -> Iterator[MakeEngine]:
    started: list[tuple[GenerationEngine, ScriptedBatch]] = []

    def make(
        batch: ScriptedBatch | None = None,
        model: LetterModel | None = None,
        grammar_backend: GrammarBackend | None = None,
        **settings: Any,
    ) -> tuple[GenerationEngine, ScriptedBatch]:
        batch = batch or ScriptedBatch()
        backend = (lambda: grammar_backend) if grammar_backend is not None else None
        engine = GenerationEngine(
            cast(LanguageModel, model or LetterModel()), make_settings(**settings), batch=batch, grammar_backend=backend
        )
        engine.start()
        started.append((engine, batch))
        return engine, batch

    yield make
    for engine, batch in started:
        batch.resume()
        engine.shutdown()
