"""Request and response bodies of `POST /classify-digit`, with examples so `/docs` can be tried directly."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.digits.jobs import ClassifyJob, DigitInput, check_batch_size
from service.schemas import RequestModel

# A small "1": a vertical bar in the middle of the 28x28 field, as MNIST would store it.
_EXAMPLE_ONE = [[0] * 28 for _ in range(4)] + [[0] * 13 + [255, 255] + [0] * 13 for _ in range(20)] + [[0] * 28 for _ in range(4)]
# A held-out MNIST "7" as a 28x28 PNG (white on black); any size and polarity works.
_EXAMPLE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAAAAABXZoBIAAAA2klEQVR42tXSsU4CQRDG8Y/LNSaCxTUmhmBlT7SxukegMUbfwZjwAvAIJHS+jEFCTbBRGhKw0IqE0GH+c0sBykFGKhu22d357cxOMdIhrcJ6L4+jrP2hQifVS3/3UfJmADaF6e3Rrj6uEMDO1rH4B9ufqjyodLKnhTrA87GPwcys5lvDgObvNdrCkqTF0E9M3g0Gvp0/YXDj47VZsF4uEG+O5VZQFkIOcw3dXUnSxK86AWxedS2dAXYv98/LoqSo62MIkrKtYpuGvr73DcUrMDv9Ay9GkP7T9C0BM8hd4NMFRpAAAAAASUVORK5CYII="
)

PixelImage = list[float] | list[list[float]]


class ClassifyDigitRequest(RequestModel):
    """Exactly one of `pixels`, `pixels_batch`, `image`, `images` (JSON). For a file upload, send multipart `file`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"pixels": _EXAMPLE_ONE},
                {"image": _EXAMPLE_PNG},
                {"images": [_EXAMPLE_PNG, _EXAMPLE_PNG], "include_prepared": False},
            ]
        },
    )

    pixels: PixelImage | None = Field(
        default=None,
        description="One digit already in MNIST form: 784 numbers (row by row) or 28 rows of 28, white ink (high) "
        "on black (0), centred like MNIST. Values 0..255 (default) or 0..1 with `value_range: \"0-1\"`. "
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

    @model_validator(mode="after")
    def _exactly_one_input(self) -> ClassifyDigitRequest:
        given = [name for name in ("pixels", "pixels_batch", "image", "images") if getattr(self, name) is not None]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(f"give exactly one of pixels, pixels_batch, image, images (got: {found})")
        return self

    def to_job(self, max_batch: int) -> ClassifyJob:
        """The inputs in order, each named as errors should name it; a batch over `max_batch` is refused."""
        inputs, batch = self._inputs(max_batch)
        return ClassifyJob(
            inputs, batch=batch, value_range=self.value_range, prepare=self.prepare, include_prepared=self.include_prepared
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


class DigitPrediction(BaseModel):
    """One classified digit."""

    digit: int = Field(ge=0, le=9, description="The most probable digit.", examples=[7])
    confidence: float = Field(ge=0, le=1, description="Probability of `digit` (= probabilities[digit]).", examples=[0.9973])
    probabilities: list[float] = Field(
        min_length=10,
        max_length=10,
        description="Probability of each digit 0..9 (index = digit); they sum to 1.",
        examples=[[0.0001, 0.0003, 0.0012, 0.0004, 0.0, 0.0001, 0.0, 0.9973, 0.0001, 0.0005]],
    )
    prepared: list[list[int]] | None = Field(
        default=None, description="The 28x28 input the model saw (0..255, ink high); only with `include_prepared`."
    )


class DigitBatchResponse(BaseModel):
    """Answer to a batch (`pixels_batch`, `images`, or several multipart `file` parts): one result per input, in order."""

    results: list[DigitPrediction]
