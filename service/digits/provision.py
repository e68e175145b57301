"""Start-up policy for the digit model: which file to serve, and training it when it is missing.

Kept apart from `model` (the classifier and its file format) and `train` (fitting one): this is the
only module that needs both, so neither of them imports the other's caller.
"""

from __future__ import annotations

import logging
from pathlib import Path

from service.config import Settings
from service.digits import train
from service.digits.model import DEFAULT_MODEL_PATH, DigitClassifier

log = logging.getLogger("service.digits")


def configured_model_path(settings: Settings) -> Path:
    """`GENAI_DIGITS_MODEL_PATH`, or the default model shipped inside the package."""
    return Path(settings.digits_model_path).expanduser() if settings.digits_model_path else DEFAULT_MODEL_PATH


def load_digit_classifier(settings: Settings) -> DigitClassifier:
    """Load the configured model; when the file is missing, train the default one (logging progress) and save it.

    A file that exists but cannot be used raises `DigitModelError`: silently retraining over a file
    someone pointed us at would hide their mistake.
    """
    path = configured_model_path(settings)
    if path.exists():
        model = DigitClassifier.load(path)
        log.info("digit model loaded from %s (held-out accuracy %s)", path, model.meta.get("heldout_accuracy"))
        return model
    fallback = Path(settings.cache_dir) / "digits" / path.name  # where start-up training saves if `path` is read-only
    if fallback.exists():
        model = DigitClassifier.load(fallback)
        log.info("digit model %s not found; loaded the one trained earlier at %s", path, fallback)
        return model
    log.warning("digit model %s not found: training the default model now (a minute or two)", path)
    saved = train.train_default_and_save(path, train.TrainConfig(), fallback_path=fallback, progress=log.info)
    return DigitClassifier.load(saved)


def provision_digit_model(settings: Settings) -> str:
    """Make sure the configured digit model exists and loads (training it if missing); describe it in a line."""
    model = load_digit_classifier(settings)
    acc = model.meta.get("heldout_accuracy")
    acc_text = f"{acc * 100:.2f}%" if isinstance(acc, (int, float)) else "unknown"
    return (
        f"{model.path} ({'-'.join(map(str, model.layer_sizes))} MLP, held-out accuracy {acc_text} "
        f"on {model.meta.get('heldout_size', '?')} digits of {model.meta.get('training_set', 'unknown data')})"
    )
