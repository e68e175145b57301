"""One `/classify-digit` request as the model side sees it, and running it: decode, prepare, classify.

A `ClassifyJob` holds its inputs undecoded. `run` does the CPU work (base64 and image decoding,
MNIST preparation, the forward pass) and is meant for a worker thread, so the event loop never waits
on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.config import Settings
from service.digits.exceptions import DigitInputError
from service.digits.model import DigitClassifier, Prediction
from service.digits.preprocess import (
    MIN_CONTRAST,
    ValueRange,
    decode_base64,
    image_bytes_to_array,
    pixels_to_array,
    prepare_gray,
)


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


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on one encoded image, checked before and while it is decoded."""

    max_bytes: int
    max_pixels: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        return cls(max_bytes=settings.digits_max_image_bytes, max_pixels=settings.digits_max_image_pixels)


@dataclass(frozen=True)
class JobResult:
    """A prediction per input, and the 28x28 array (0..1) the model saw for it."""

    predictions: list[Prediction]
    prepared: list[np.ndarray]


def check_batch_size(param: str, n: int, max_batch: int) -> None:
    """At least one input, at most `max_batch` (GENAI_DIGITS_MAX_BATCH)."""
    if n == 0:
        raise DigitInputError(f"{param} is empty: give at least one input", param=param)
    if n > max_batch:
        raise DigitInputError(
            f"{param} has {n} inputs; at most {max_batch} per request (GENAI_DIGITS_MAX_BATCH)", param=param
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


def run(classifier: DigitClassifier, job: ClassifyJob, limits: ImageLimits) -> JobResult:
    """Decode every input, then classify them as one batch (blocking: call it in a worker thread)."""
    arrays = [input_to_array(item, job, limits) for item in job.inputs]
    return JobResult(predictions=classifier.predict(np.stack(arrays)), prepared=arrays)
