"""One `/classify-digit` request as the model side sees it, and running it: decode, prepare, classify.

A `ClassifyJob` holds its inputs undecoded. `run` does the CPU work (base64 and image decoding,
MNIST preparation, the forward pass, and for `explain` the explanations and the reference digits' first
build) and is meant for a worker thread, so the event loop never waits on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.config import Settings
from service.digits.exceptions import DigitInputError
from service.digits.explain import DigitExplanation, Neighbour, explain_digit
from service.digits.model import DigitClassifier, Prediction
from service.digits.preprocess import (
    MIN_CONTRAST,
    ValueRange,
    decode_base64,
    image_bytes_to_array,
    pixels_to_array,
    prepare_gray,
)
from service.digits.reference import ReferenceDigitsCache

EXPLAIN_TOP_UNITS = 8  # first-hidden-layer units listed per explanation (the weights endpoint has them all)
EXPLAIN_NEIGHBOURS = 5  # nearest reference digits per explanation


@dataclass(frozen=True)
class DigitInput:
    """One digit to classify, not decoded yet: pixel numbers, a base64 image, or an uploaded image's bytes."""

    value: Sequence[object] | str | bytes
    param: str  # the field it came from, as errors name it (`images[2]`, `file`)


@dataclass(frozen=True)
class ClassifyJob:
    """The digits of one request, in order, and how to treat them."""

    inputs: list[DigitInput]
    batch: bool  # answer `{results: [...]}` rather than one prediction
    value_range: ValueRange = "0-255"
    prepare: bool = False
    include_prepared: bool = False
    explain: bool = False  # also explain each prediction (see `ExplainedDigit`)


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on one encoded image, checked before and while it is decoded."""

    max_bytes: int
    max_pixels: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        return cls(max_bytes=settings.digits_max_image_bytes, max_pixels=settings.digits_max_image_pixels)


@dataclass(frozen=True)
class ExplainedDigit:
    """What the network saw in one input: the explainer's numbers and the nearest reference digits."""

    explanation: DigitExplanation
    neighbours: list[Neighbour]
    reference_set: str  # what the neighbours were drawn from


@dataclass(frozen=True)
class JobResult:
    """A prediction per input, the 28x28 array (0..1) the model saw for it, and (for `explain`) an explanation each."""

    predictions: list[Prediction]
    prepared: list[np.ndarray]
    explanations: list[ExplainedDigit] | None = None


def check_batch_size(param: str, n: int, max_batch: int) -> None:
    """At least one input, at most `max_batch` (GENAI_DIGITS_MAX_BATCH)."""
    if n == 0:
        raise DigitInputError(f"{param} is empty: give at least one input", param=param)
    if n > max_batch:
        raise DigitInputError(
            f"{param} has {n} inputs; at most {max_batch} per request (GENAI_DIGITS_MAX_BATCH)", param=param
        )


def check_explain_batch_size(param: str, n: int, max_explain_batch: int) -> None:
    """An explanation is ~85 KB of JSON per digit, so `explain` takes at most `max_explain_batch` inputs."""
    if n > max_explain_batch:
        raise DigitInputError(
            f"explain is limited to {max_explain_batch} inputs per request (GENAI_DIGITS_MAX_EXPLAIN_BATCH); "
            f"{param} has {n}: send fewer, or explain=false",
            param="explain",
        )


def input_to_array(item: DigitInput, job: ClassifyJob, limits: ImageLimits) -> np.ndarray:
    """Decode and prepare one input into the model's 28x28 form."""
    if isinstance(item.value, bytes):
        return image_bytes_to_array(
            item.value, param=item.param, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels
        )
    if isinstance(item.value, str):
        data = decode_base64(item.value, max_bytes=limits.max_bytes, param=item.param)
        return image_bytes_to_array(data, param=item.param, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels)
    arr = pixels_to_array(item.value, value_range=job.value_range, param=item.param)
    if float(arr.max() - arr.min()) < MIN_CONTRAST:  # all zeros, or one grey: as a blank image is
        raise DigitInputError(
            f"{item.param} is blank: no digit found (every pixel has the same value)", param=item.param
        )
    # prepare_gray finds the polarity from the border, so ink-high and ink-low arrays both work.
    return prepare_gray(arr, param=item.param) if job.prepare else arr


def run(
    classifier: DigitClassifier, job: ClassifyJob, limits: ImageLimits, references: ReferenceDigitsCache | None = None
) -> JobResult:
    """Decode every input, classify them as one batch, explain them if asked (blocking: call it in a worker thread).

    `references` is needed for `explain`: the first explanation builds the reference digits (seconds)."""
    arrays = [input_to_array(item, job, limits) for item in job.inputs]
    predictions = classifier.predict(np.stack(arrays))
    if not job.explain:
        return JobResult(predictions=predictions, prepared=arrays)
    if references is None:
        raise ValueError("explain needs the reference digits' cache")
    return JobResult(predictions=predictions, prepared=arrays, explanations=explain_all(classifier, arrays, references))


def explain_all(
    classifier: DigitClassifier, arrays: list[np.ndarray], references: ReferenceDigitsCache
) -> list[ExplainedDigit]:
    """Explain each prepared input and find its nearest reference digits (building those on first use)."""
    reference = references.get(classifier)
    explained = []
    for arr in arrays:
        # Matrix-vector products, as a prediction's are: one BLAS thread, in turn with predictions.
        with classifier.blas.one_thread():
            explanation = explain_digit(classifier, arr, top_units=EXPLAIN_TOP_UNITS)
            neighbours = reference.index.nearest(arr, EXPLAIN_NEIGHBOURS)
        explained.append(ExplainedDigit(explanation, neighbours, reference.description))
    return explained
