"""The app factory: `create_app(settings)` wires settings, middleware, routers and the model-loading lifespan."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import __version__
from service.app_state import AppState, state_of
from service.config import Settings
from service.digits.model import DigitModelError
from service.digits.provision import load_digit_classifier
from service.errors import install_error_handlers
from service.language.engine import GenerationEngine, engine_threads
from service.language.loading import ModelLoadError, load_language_model
from service.language.model import LanguageModel
from service.limits import BodySizeLimitMiddleware
from service.observability.metrics import ServiceMetrics
from service.observability.middleware import REQUEST_ID_HEADER, RequestContextMiddleware
from service.security import ApiKey
from service.state import LoadedModels

log = logging.getLogger("service")

DESCRIPTION = """
Generative-AI fundamentals, served: a handwritten-digit classifier, and a causal language model's
tokenizer, next-token distribution and streamed generation.

Every error is JSON: `{"error": {"message", "type", "param", "code"}}`; invalid fields get 422
(400 under `/v1`), oversized bodies 413, a full queue 429, a model still loading 503.
"""


def load_models(settings: Settings) -> LoadedModels:
    """Load every enabled model (blocking). Called by the lifespan, or ahead of it by the CLI for a clean error."""
    # The loading thread runs torch on one thread: only the engine's thread may start a team of OpenMP
    # threads (see GenerationEngine.start), or every parallel kernel of the engine slows down.
    torch.set_num_threads(1)
    models = LoadedModels()
    # Digits first: a bad digit model file should fail start-up before a slow language-model load.
    started = time.perf_counter()
    try:
        models.digits = load_digit_classifier(settings)
    except DigitModelError as exc:
        raise ModelLoadError(str(exc)) from exc
    models.load_seconds["digits"] = time.perf_counter() - started
    if settings.load_language_model:
        started = time.perf_counter()
        models.language = load_language(settings)
        models.load_seconds["language"] = time.perf_counter() - started
    return models


def load_language(settings: Settings) -> LanguageModel:
    """The language model the settings name, as serving runs it (blocking)."""
    return load_language_model(
        settings.lm_model,
        device=settings.device,
        dtype=settings.dtype,
        cache_dir=settings.cache_dir,
        revision=settings.lm_revision,
        weights=settings.weights,
        lean=settings.lean_decoder,
        compiled_step=engine_threads(settings) if settings.compiled_step == "on" else 0,
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = state_of(app)
    settings = state.settings
    preloaded = state.preloaded_models
    if preloaded is not None:
        # A copy: apps built from the same preloaded models (tests do this) each run their own engine.
        models = dataclasses.replace(preloaded, engine=None, load_seconds=dict(preloaded.load_seconds))
    else:
        models = await asyncio.to_thread(load_models, settings)
    if models.language is not None:
        models.engine = GenerationEngine(models.language, settings)
        models.engine.start()
    state.models = models
    state.metrics.bind(models)
    state.ready = True
    log.info("ready")
    try:
        yield
    finally:
        state.ready = False
        state.metrics.unbind()
        if models.engine is not None:
            # uvicorn has already waited GENAI_SHUTDOWN_GRACE_S for open requests; what is left is cancelled.
            await asyncio.to_thread(models.engine.shutdown)


def begin_draining(app: FastAPI) -> None:
    """First step of a graceful shutdown: readiness turns 503 and no new generation is admitted,
    while requests already admitted run on to the end (or the grace period)."""
    state = state_of(app)
    state.ready = False
    engine = state.models.engine
    if engine is not None:
        engine.stop_accepting()
        # uvicorn cancels the handlers still running when the grace ends, and a cancelled handler answers
        # 500; a second before that, the engine ends what is left itself, so each gets its own answer
        # (finish_reason `cancelled`, with the text so far).
        grace = state.settings.shutdown_grace_s
        timer = threading.Timer(max(0.0, grace - 1.0), engine.cancel_all)
        timer.daemon = True
        timer.start()
    log.info("draining: not ready, admitting no new work")


def create_app(settings: Settings | None = None, *, models: LoadedModels | None = None) -> FastAPI:
    """Build the ASGI app. `models` lets a caller that already loaded them (the CLI, tests) skip loading."""
    settings = settings or Settings()
    app = FastAPI(
        title="genai-service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from service.web.docs, with their assets served here, not from a CDN
        redoc_url=None,
    )
    # No automatic `/path/` -> `/path` redirects: their Location echoes the request's Host header (an
    # open redirect and a cache-poisoning vector); a wrong path is a plain 404.
    app.router.redirect_slashes = False
    # One typed record instead of Starlette's attribute bag; the lifespan fills in the models and `ready`.
    state = AppState(settings=settings, metrics=ServiceMetrics(), preloaded_models=models)
    app.state = state  # type: ignore[assignment]  # FastAPI declares `state: State`; nothing in it reads the bag

    install_error_handlers(app)
    # Outermost last: request ids/logs/metrics see everything, CORS answers preflights before the body limit.
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=[REQUEST_ID_HEADER, "Retry-After"],
        )
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics, log_prompts=settings.log_prompts)

    from service.digits.router import router as digits_router
    from service.inspect.router import router as inspect_router
    from service.language.router import router as language_router
    from service.observability.router import router as metrics_router
    from service.oip.router import router as oip_router
    from service.openai.router import router as openai_router
    from service.system.router import router as system_router
    from service.web.docs import router as docs_router
    from service.web.router import router as web_router

    app.include_router(system_router)
    app.include_router(metrics_router)
    # Model routes need an API key when GENAI_API_KEYS is set (`/v1` and `/v2` routers carry their own).
    app.include_router(language_router, dependencies=[ApiKey])
    app.include_router(digits_router, dependencies=[ApiKey])
    app.include_router(inspect_router, dependencies=[ApiKey])
    app.include_router(openai_router)
    app.include_router(oip_router)
    app.include_router(web_router)
    app.include_router(docs_router)
    return app
