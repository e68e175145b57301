"""What the lifespan loads and the routers use: one typed container, `AppState.models` (see `service.app_state`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.digits.model import DigitClassifier
    from service.language.engine import GenerationEngine
    from service.language.model import LanguageModel


@dataclass
class LoadedModels:
    """Models shared by every request. Fields stay None for capabilities that are switched off or not loaded yet."""

    language: LanguageModel | None = None
    engine: GenerationEngine | None = None
    digits: DigitClassifier | None = None
    load_seconds: dict[str, float] = field(default_factory=dict)
