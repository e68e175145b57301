"""Annotated dependency aliases: how routers reach the app's `AppState` (settings, metrics, loaded models).

Routers take these as parameters (`settings: SettingsDep`) and never read `app.state` themselves, so
every access is typed and a model that is not loaded answers 503 in one place. The dependencies are
`async def` on purpose: FastAPI runs a plain `def` dependency in its threadpool, a thread hop per
dependency per request (about a third of a /tokenize request's time on two cores).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.app_state import AppState, state_of
from service.config import Settings
from service.digits.model import DigitClassifier
from service.digits.reference import ReferenceDigitsCache
from service.errors import ModelNotReady
from service.inspect.scheduling import InspectionQueue
from service.language.engine import GenerationEngine
from service.language.model import LanguageModel
from service.observability.metrics import ServiceMetrics
from service.state import LoadedModels


def app_state(request: Request) -> AppState:
    """The state of the app serving `request` (plain function: also callable where a parameter cannot be added)."""
    return state_of(request.app)


async def get_app_state(request: Request) -> AppState:
    return app_state(request)


async def get_settings(request: Request) -> Settings:
    return app_state(request).settings


async def get_metrics(request: Request) -> ServiceMetrics:
    return app_state(request).metrics


async def get_models(request: Request) -> LoadedModels:
    return app_state(request).models


async def get_language_model(request: Request) -> LanguageModel:
    model = app_state(request).models.language
    if model is None:
        raise ModelNotReady(
            "the language model is not loaded (still starting, or disabled by GENAI_LOAD_LANGUAGE_MODEL)"
        )
    return model


async def get_engine(request: Request) -> GenerationEngine:
    engine = app_state(request).models.engine
    if engine is None or not engine.is_running:
        raise ModelNotReady("the generation engine is not running (still starting, or shutting down)")
    return engine


async def get_inspection_queue(request: Request) -> InspectionQueue:
    """The serving engine's inspection queue (scheduling.py), bounded by GENAI_MAX_WAITING_REQUESTS."""
    state = app_state(request)
    return state.inspection_queues.of(await get_engine(request), state.settings.max_waiting_requests)


async def get_digit_classifier(request: Request) -> DigitClassifier:
    classifier = app_state(request).models.digits
    if classifier is None:
        raise ModelNotReady("the digit classifier is not loaded yet")
    return classifier


async def get_digit_references(request: Request) -> ReferenceDigitsCache:
    return app_state(request).digit_references


AppStateDep = Annotated[AppState, Depends(get_app_state)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
ModelsDep = Annotated[LoadedModels, Depends(get_models)]
LanguageModelDep = Annotated[LanguageModel, Depends(get_language_model)]
EngineDep = Annotated[GenerationEngine, Depends(get_engine)]
InspectionQueueDep = Annotated[InspectionQueue, Depends(get_inspection_queue)]
DigitClassifierDep = Annotated[DigitClassifier, Depends(get_digit_classifier)]
DigitReferencesDep = Annotated[ReferenceDigitsCache, Depends(get_digit_references)]
