"""Annotated dependency aliases: how routers reach the settings and the loaded models on `app.state`.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in its threadpool, a thread hop
per dependency per request (about a third of a /tokenize request's time on two cores).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.config import Settings
from service.digits.model import DigitClassifier
from service.errors import ModelNotReady
from service.language.engine import GenerationEngine
from service.language.model import LanguageModel
from service.state import LoadedModels


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_models(request: Request) -> LoadedModels:
    return request.app.state.models


async def get_language_model(request: Request) -> LanguageModel:
    model = request.app.state.models.language
    if model is None:
        raise ModelNotReady("the language model is not loaded (still starting, or disabled by GENAI_LOAD_LANGUAGE_MODEL)")
    return model


async def get_engine(request: Request) -> GenerationEngine:
    engine = request.app.state.models.engine
    if engine is None or not engine.is_running:
        raise ModelNotReady("the generation engine is not running (still starting, or shutting down)")
    return engine


async def get_digit_classifier(request: Request) -> DigitClassifier:
    classifier = request.app.state.models.digits
    if classifier is None:
        raise ModelNotReady("the digit classifier is not loaded yet")
    return classifier


SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelsDep = Annotated[LoadedModels, Depends(get_models)]
LanguageModelDep = Annotated[LanguageModel, Depends(get_language_model)]
EngineDep = Annotated[GenerationEngine, Depends(get_engine)]
DigitClassifierDep = Annotated[DigitClassifier, Depends(get_digit_classifier)]
