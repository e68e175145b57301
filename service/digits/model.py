"""The digit classifier: an MLP's weights in a plain `.npz` file, evaluated with numpy.

The file holds only numeric and string arrays and is read with `allow_pickle=False`, so loading a model
file can never execute code (unlike a pickle or joblib dump). It does not depend on the scikit-learn
version that trained it either: the forward pass below is the one `MLPClassifier.predict_proba` computes.
"""

from __future__ import annotations

import json
import threading
import zipfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "genai-service/digits-mlp"
FORMAT_VERSION = 1
N_INPUTS = 28 * 28
N_CLASSES = 10
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "data" / "digits_mlp.npz"
_ACTIVATIONS = ("relu", "tanh", "logistic", "identity")


class DigitModelError(RuntimeError):
    """The digit model file cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class Prediction:
    """One classified digit: the most probable class, its probability, and all ten probabilities."""

    digit: int
    confidence: float
    probabilities: list[float]


def metrics_path_for(model_path: Path) -> Path:
    """The metrics JSON that `train-digits` writes beside a model file."""
    return model_path.with_name(model_path.stem + ".metrics.json")


class BlasLimiter:
    """One BLAS thread for the (tiny) matrix products of a prediction, one prediction at a time.

    With OpenBLAS's default of one thread per core, a batch of 8 digits took ~50 ms on a busy machine
    (threads spinning for a core) instead of ~0.1 ms. The limit is process-wide (threadpoolctl sets it
    and restores it on exit), so holders of one limiter take turns under its lock; classifiers that may
    predict at the same time in one process should share one limiter (`DigitClassifier(blas=...)`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._controller: Any = (
            None  # threadpoolctl's ThreadpoolController, made on first use (it scans loaded libraries)
        )

    @contextmanager
    def one_thread(self) -> Iterator[None]:
        """Hold the lock and limit BLAS to one thread for the duration of the block."""
        with self._lock, self._limit():
            yield

    def _limit(self) -> AbstractContextManager[Any]:
        try:
            if self._controller is None:
                from threadpoolctl import ThreadpoolController  # a scikit-learn dependency

                self._controller = ThreadpoolController()
            limit: AbstractContextManager[Any] = self._controller.limit(limits=1, user_api="blas")
            return limit
        except Exception:  # no threadpoolctl, or an unusual BLAS: run as is
            return nullcontext()


def _activate(name: str, x: np.ndarray) -> np.ndarray:
    """Apply the hidden layers' activation; relu and tanh work in place on `x`."""
    if name == "relu":
        np.maximum(x, 0.0, out=x)
    elif name == "tanh":
        np.tanh(x, out=x)
    elif name == "logistic":
        return np.asarray(1.0 / (1.0 + np.exp(-x)))
    return x


class DigitClassifier:
    """Classifies MNIST-style 28x28 images (ink = 1.0, background = 0.0). Thread-safe: it only reads arrays."""

    def __init__(
        self,
        weights: list[np.ndarray],
        biases: list[np.ndarray],
        *,
        activation: str = "relu",
        meta: dict[str, Any] | None = None,
        path: Path | None = None,
        blas: BlasLimiter | None = None,
    ) -> None:
        _check_layers(weights, biases, activation, where=str(path) if path else "model")
        self.weights = [np.ascontiguousarray(w, dtype=np.float32) for w in weights]
        self.biases = [np.ascontiguousarray(b, dtype=np.float32) for b in biases]
        self.activation = activation
        self.meta: dict[str, Any] = dict(meta or {})
        self.path = path
        self.metrics: dict[str, Any] | None = None
        self.blas = blas or BlasLimiter()

    # --- inference -----------------------------------------------------------------------

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """(n, 28, 28) or (n, 784) values in 0..1 -> (n, 10) probabilities (float64, rows sum to 1)."""
        x = np.asarray(images, dtype=np.float32).reshape(-1, N_INPUTS)
        with self.blas.one_thread():
            for w, b in zip(self.weights[:-1], self.biases[:-1], strict=True):
                x = _activate(self.activation, x @ w + b)
            logits = (x @ self.weights[-1] + self.biases[-1]).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return np.asarray(exp / exp.sum(axis=1, keepdims=True), dtype=np.float64)

    def predict(self, images: np.ndarray) -> list[Prediction]:
        """Classify a batch; results keep the input order."""
        probs = self.predict_proba(images)
        results = []
        for row in probs:
            digit = int(row.argmax())
            results.append(Prediction(digit=digit, confidence=float(row[digit]), probabilities=[float(p) for p in row]))
        return results

    # --- description -----------------------------------------------------------------------

    @property
    def layer_sizes(self) -> list[int]:
        return [N_INPUTS] + [int(w.shape[1]) for w in self.weights]

    @property
    def n_parameters(self) -> int:
        return int(sum(w.size + b.size for w, b in zip(self.weights, self.biases, strict=True)))

    def describe(self) -> dict[str, Any]:
        """What `/info` shows as `digit_model`: file, training set, held-out accuracy and sizes."""
        meta = self.meta
        metrics = self.metrics or {}
        return {
            "file": str(self.path) if self.path else None,
            "file_bytes": self.path.stat().st_size if self.path and self.path.exists() else None,
            "format": f"{FORMAT} v{FORMAT_VERSION} (.npz arrays, loaded without pickle)",
            "architecture": "MLP " + "-".join(str(n) for n in self.layer_sizes) + f" ({self.activation})",
            "parameters": self.n_parameters,
            "training_set": meta.get("training_set"),
            "train_size": meta.get("train_size"),
            "train_size_augmented": meta.get("train_size_augmented"),
            "heldout_size": meta.get("heldout_size"),
            "heldout_accuracy": meta.get("heldout_accuracy"),
            "trained_at": meta.get("trained_at"),
            "metrics_file": str(metrics_path_for(self.path)) if self.path and metrics else None,
        }

    # --- files -----------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the weights (float32) and metadata as a compressed `.npz` of plain arrays."""
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "format": np.array(FORMAT),
            "format_version": np.array(FORMAT_VERSION),
            "activation": np.array(self.activation),
            "n_layers": np.array(len(self.weights)),
            "meta_json": np.array(json.dumps(self.meta, sort_keys=True)),
        }
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            arrays[f"W{i}"] = w
            arrays[f"b{i}"] = b
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, allow_pickle=False, **arrays)  # plain arrays only, as `load` reads them
        tmp.replace(path)
        self.path = path

    @classmethod
    def load(cls, path: Path, *, blas: BlasLimiter | None = None) -> DigitClassifier:
        """Read a model file; anything unexpected becomes a `DigitModelError` that says what is wrong."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                files = set(npz.files)
                if "format" not in files or str(npz["format"]) != FORMAT:
                    raise DigitModelError(
                        f"digit model file {path} is not a genai-service digit model (no '{FORMAT}' marker); "
                        "retrain with `make train-digits` or point GENAI_DIGITS_MODEL_PATH at a model file"
                    )
                version = int(npz["format_version"])
                if version != FORMAT_VERSION:
                    raise DigitModelError(
                        f"digit model file {path} has format version {version}; this service reads {FORMAT_VERSION}"
                    )
                n_layers = int(npz["n_layers"])
                weights = [npz[f"W{i}"] for i in range(n_layers)]
                biases = [npz[f"b{i}"] for i in range(n_layers)]
                activation = str(npz["activation"])
                meta = json.loads(str(npz["meta_json"])) if "meta_json" in files else {}
        except DigitModelError:
            raise
        except FileNotFoundError:
            raise
        except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError, TypeError, json.JSONDecodeError) as exc:
            raise DigitModelError(
                f"digit model file {path} is corrupt or not a digit model ({type(exc).__name__}: {exc}); "
                "delete it to retrain at start-up, or run `make train-digits`"
            ) from exc
        model = cls(weights, biases, activation=activation, meta=meta, path=path, blas=blas)
        model.metrics = _read_metrics(metrics_path_for(path))
        return model


def _check_layers(weights: list[np.ndarray], biases: list[np.ndarray], activation: str, *, where: str) -> None:
    """Refuse weights that do not chain 784 -> ... -> 10, so a wrong file fails at start-up, not per request."""
    if activation not in _ACTIVATIONS:
        raise DigitModelError(f"digit model {where}: unknown activation {activation!r}")
    if not weights or len(weights) != len(biases):
        raise DigitModelError(
            f"digit model {where}: expected matching weight and bias arrays, got {len(weights)} and {len(biases)}"
        )
    expected_in = N_INPUTS
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        if w.ndim != 2 or w.shape[0] != expected_in or b.shape != (w.shape[1],):
            raise DigitModelError(
                f"digit model {where}: layer {i} has weights {list(w.shape)} and bias {list(b.shape)}; "
                f"expected [{expected_in}, n] and [n] (input must be 28x28 = 784)"
            )
        if not np.issubdtype(w.dtype, np.floating) or not np.all(np.isfinite(w)) or not np.all(np.isfinite(b)):
            raise DigitModelError(f"digit model {where}: layer {i} holds non-numeric or non-finite values")
        expected_in = w.shape[1]
    if expected_in != N_CLASSES:
        raise DigitModelError(
            f"digit model {where}: the last layer has {expected_in} outputs; expected {N_CLASSES} digits"
        )


def _read_metrics(path: Path) -> dict[str, Any] | None:
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None
