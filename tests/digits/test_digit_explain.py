"""The digit explainer's numbers, checked against independent computations: finite differences for the
saliency, the model's own forward pass for the probabilities, the logit's decomposition for the units, and
brute-force distances for the neighbours."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from service.digits.explain import NeighbourIndex, explain_digit, hidden_features
from service.digits.model import DigitClassifier
from service.digits.reference import build_reference_digits


def _probability(model: DigitClassifier, x: np.ndarray, digit: int) -> float:
    """p[digit] by a float64 forward pass written out here (not the explainer's)."""
    a = x.astype(np.float64).reshape(1, 784)
    for w, b in zip(model.weights[:-1], model.biases[:-1], strict=True):
        z = a @ w.astype(np.float64) + b
        a = {"relu": np.maximum(z, 0), "tanh": np.tanh(z), "logistic": 1 / (1 + np.exp(-z)), "identity": z}[
            model.activation
        ]
    logits = (a @ model.weights[-1].astype(np.float64) + model.biases[-1])[0]
    e = np.exp(logits - logits.max())
    return float(e[digit] / e.sum())


def _finite_difference(
    model: DigitClassifier,
    x: np.ndarray,
    digit: int,
    eps: float = 1e-6,
    of: Callable[[DigitClassifier, np.ndarray, int], float] = _probability,
) -> np.ndarray:
    flat = x.astype(np.float64).reshape(784)
    grad = np.zeros(784)
    for i in range(784):
        up, down = flat.copy(), flat.copy()
        up[i] += eps
        down[i] -= eps
        grad[i] = (of(model, up, digit) - of(model, down, digit)) / (2 * eps)
    return grad.reshape(28, 28)


@pytest.fixture(scope="module")
def uncertain_digit(classifier: DigitClassifier, heldout: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """A held-out digit the model is unsure of (top probability 0.4..0.9): its probability is not saturated."""
    x, _ = heldout
    top = classifier.predict_proba(x).max(axis=1)
    digit: np.ndarray = x[int(np.nonzero((top > 0.4) & (top < 0.9))[0][0])]
    return digit


def _random_mlp(activation: str, hidden: list[int], seed: int) -> DigitClassifier:
    rng = np.random.default_rng(seed)
    sizes = [784, *hidden, 10]
    weights = [rng.normal(0, 1 / np.sqrt(n), size=(n, m)) for n, m in itertools.pairwise(sizes)]
    biases = [rng.normal(0, 0.1, size=m) for m in sizes[1:]]
    return DigitClassifier(weights, biases, activation=activation)


def test_probabilities_are_the_models_own(classifier: DigitClassifier, samples: list[tuple[np.ndarray, int]]) -> None:
    for image, digit in samples:
        explanation = explain_digit(classifier, image)
        assert explanation.digit == digit
        np.testing.assert_allclose(explanation.probabilities, classifier.predict_proba(image)[0], atol=1e-5)


def test_saliency_matches_finite_differences_on_the_shipped_model(
    classifier: DigitClassifier, uncertain_digit: np.ndarray
) -> None:
    explanation = explain_digit(classifier, uncertain_digit)
    numeric = _finite_difference(classifier, uncertain_digit, explanation.digit)
    assert np.abs(numeric).max() > 1e-3  # a real signal, not two zero maps
    np.testing.assert_allclose(explanation.saliency, numeric, rtol=1e-3, atol=1e-4 * np.abs(numeric).max())


def _raw_logit(model: DigitClassifier, x: np.ndarray, digit: int) -> float:
    a = x.astype(np.float64).reshape(1, 784)
    for w, b in zip(model.weights[:-1], model.biases[:-1], strict=True):
        a = np.maximum(a @ w.astype(np.float64) + b, 0)  # the shipped model is relu
    return float((a @ model.weights[-1].astype(np.float64) + model.biases[-1])[0][digit])


def test_logit_saliency_matches_finite_differences(
    classifier: DigitClassifier, samples: list[tuple[np.ndarray, int]]
) -> None:
    image, digit = samples[3]  # a confident digit: its probability's gradient is ~0, its logit's is not
    explanation = explain_digit(classifier, image)
    numeric = _finite_difference(classifier, image, digit, eps=1e-5, of=_raw_logit)
    assert classifier.activation == "relu"
    assert np.abs(explanation.logit_saliency).max() > 10 * np.abs(explanation.saliency).max()
    np.testing.assert_allclose(explanation.logit_saliency, numeric, rtol=1e-3, atol=1e-4 * np.abs(numeric).max())


@pytest.mark.parametrize(("activation", "hidden"), [("tanh", [32, 16]), ("logistic", [24]), ("identity", [12, 12])])
def test_saliency_is_exact_for_other_activations_and_depths(activation: str, hidden: list[int]) -> None:
    model = _random_mlp(activation, hidden, seed=len(hidden))
    image = np.random.default_rng(7).uniform(0, 1, size=(28, 28))
    explanation = explain_digit(model, image)
    np.testing.assert_allclose(
        explanation.saliency, _finite_difference(model, image, explanation.digit), rtol=1e-4, atol=1e-9
    )
    assert [a.shape for a in explanation.hidden_activations] == [(n,) for n in hidden]


def test_unit_contributions_add_up_to_the_logit(
    classifier: DigitClassifier, samples: list[tuple[np.ndarray, int]]
) -> None:
    image, digit = samples[7]
    explanation = explain_digit(classifier, image, top_units=classifier.layer_sizes[1])
    total = sum(u.contribution for u in explanation.top_units) + explanation.output_bias
    assert total == pytest.approx(explanation.logit, rel=1e-9, abs=1e-9)
    contributions = [u.contribution for u in explanation.top_units]
    assert contributions == sorted(contributions, reverse=True)
    top = explanation.top_units[0]
    np.testing.assert_array_equal(top.weights.reshape(784), classifier.weights[0][:, top.unit])
    hidden = explanation.hidden_activations[0]
    assert top.activation == pytest.approx(hidden[top.unit])
    assert top.contribution == pytest.approx(hidden[top.unit] * float(classifier.weights[1][top.unit, digit]))


def test_neighbours_are_the_nearest_by_brute_force(
    classifier: DigitClassifier, mnist: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = mnist
    index = NeighbourIndex(classifier, x[:600], y[:600])
    query = x[1000]
    found = index.nearest(query, count=5)
    features = hidden_features(classifier, x[:600])
    distances = np.linalg.norm(features - hidden_features(classifier, query[None])[0], axis=1)
    assert [n.index for n in found] == list(np.argsort(distances, kind="stable")[:5])
    np.testing.assert_allclose([n.distance for n in found], np.sort(distances)[:5], rtol=1e-6)
    assert [n.label for n in found] == [int(y[n.index]) for n in found]
    itself = index.nearest(x[42], count=1)[0]
    assert (itself.index, itself.label) == (42, int(y[42]))
    assert itself.distance == pytest.approx(0.0, abs=1e-3)


def test_the_shipped_models_reference_set_excludes_its_held_out_digits(
    classifier: DigitClassifier, digits_metrics: dict[str, Any], heldout: tuple[np.ndarray, np.ndarray]
) -> None:
    reference = build_reference_digits(classifier)
    held = set(digits_metrics["heldout_split"]["indices"])
    assert len(reference.index) == 5000 - len(held)
    assert held.isdisjoint(int(i) for i in reference.index.indices)
    assert "held-out digits excluded" in reference.description
    x, _ = heldout
    assert all(n.distance > 0 for n in reference.index.nearest(x[0], count=5))
