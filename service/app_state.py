"""`AppState`: everything an app built by `create_app` keeps for its requests, as one typed record.

It is the app's `app.state` (in place of Starlette's untyped attribute bag): `create_app` makes it, the
lifespan fills in the models and flips `ready`, and routers reach it only through `service.deps`.
It lives apart from `service.state` (the loaded models) because it holds the metrics, and the metrics
module already reads `service.state`: one module for both would be an import circle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from starlette.applications import Starlette

from service.config import Settings
from service.digits.reference import ReferenceDigitsCache
from service.inspect.scheduling import InspectionQueues
from service.observability.metrics import ServiceMetrics
from service.state import LoadedModels


@dataclass(slots=True)
class AppState:
    """Shared by every request of one app. Slots: a misspelt attribute fails instead of adding a new one."""

    settings: Settings
    metrics: ServiceMetrics
    preloaded_models: LoadedModels | None = None  # models loaded before the app was built (the CLI, tests)
    models: LoadedModels = field(default_factory=LoadedModels)  # what the lifespan serves; empty until it starts
    ready: bool = False  # True from the end of start-up until draining begins
    started_at: float = field(default_factory=time.time)  # Unix time the app was built (`created` of /v1/models)
    digit_references: ReferenceDigitsCache = field(default_factory=ReferenceDigitsCache)  # built on the first explain
    inspection_queues: InspectionQueues = field(default_factory=InspectionQueues)  # inspections' turns on the engine


def state_of(app: Starlette) -> AppState:
    """The app's `AppState`; an app not built by `create_app` is a programming error, said plainly."""
    state = app.state
    if not isinstance(state, AppState):
        raise TypeError(
            f"{type(app).__name__}.state is {type(state).__name__}, not AppState: build the app with create_app"
        )
    return state
