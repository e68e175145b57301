"""Property tests for the digit image preparation (service/digits/preprocess.py).

Whatever arrives (any size, any Pillow mode, any content, any encoding, any bytes), preparation either
gives a 28x28 float32 array in [0, 1] or raises `DigitInputError` (the router's 422/413), nothing else.
And it does what MNIST's preparation does: polarity does not matter, position does not matter, and the
ink's centre of mass lands on MNIST's centre.
"""

from __future__ import annotations

import io
from typing import TypedDict

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from service.digits.exceptions import DigitInputError
from service.digits.preprocess import (
    CENTRE,
    SIDE,
    centre_by_mass,
    decode_base64,
    image_bytes_to_array,
    pixels_to_array,
    prepare_gray,
    prepare_image,
)

PROPERTY_SETTINGS = settings(
    max_examples=100, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)


class DecodeLimits(TypedDict):
    """The keyword limits of `image_bytes_to_array`, passed as `**LIMITS`."""

    max_bytes: int
    max_pixels: int


LIMITS: DecodeLimits = {"max_bytes": 256 * 1024, "max_pixels": 1_000_000}

# Every mode Pillow's decoders hand over, and more. Not "La" (premultiplied LA): no accepted format decodes
# to it, and Pillow cannot convert it to RGBA, so normalise_mode's `convert("RGBA")` would raise ValueError.
MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "I", "I;16", "F", "CMYK", "YCbCr", "LAB", "HSV"]


def assert_mnist_shaped(arr: np.ndarray) -> None:
    assert arr.shape == (SIDE, SIDE)
    assert arr.dtype == np.float32
    assert np.all(np.isfinite(arr))
    assert float(arr.min()) >= 0.0 and float(arr.max()) <= 1.0


@st.composite
def grays(draw: st.DrawFn, max_side: int = 96) -> np.ndarray:
    """Grayscale pictures in 0..1: noise, flat fills, or strokes on a background, of any shape."""
    height, width = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    if draw(st.integers(0, 9)) == 0:  # now and then a long strip, past the 2048-px box reduction
        long_side = draw(st.integers(300, 2600))
        height, width = (long_side, min(width, 48)) if draw(st.booleans()) else (min(height, 48), long_side)
    kind = draw(st.sampled_from(["noise", "flat", "strokes"]))
    if kind == "noise":
        seed = draw(st.integers(0, 2**32 - 1))
        return np.random.default_rng(seed).random((height, width), dtype=np.float32)
    background = draw(st.floats(0, 1, width=32))
    gray = np.full((height, width), background, dtype=np.float32)
    if kind == "strokes":
        ink = draw(st.floats(0, 1, width=32))
        for _ in range(draw(st.integers(1, 4))):
            r0, r1 = sorted(draw(st.tuples(st.integers(0, height - 1), st.integers(0, height - 1))))
            c0, c1 = sorted(draw(st.tuples(st.integers(0, width - 1), st.integers(0, width - 1))))
            gray[r0 : r1 + 1, c0 : c1 + 1] = ink
    return gray


@st.composite
def images(draw: st.DrawFn) -> Image.Image:
    """A Pillow image in any mode, from a gray picture (colour modes get a random tint)."""
    gray = draw(grays())
    mode = draw(st.sampled_from(MODES))
    base = Image.fromarray(np.rint(gray * 255).astype(np.uint8))
    if mode in ("I", "I;16", "F"):
        scale = draw(st.sampled_from([1, 257, 65535]))
        values = gray * (255 * scale if mode != "F" else draw(st.floats(1e-3, 1e6)))
        if mode == "F":
            return Image.fromarray(values.astype(np.float32))  # dtype picks the mode: F, I;16, I
        if mode == "I;16":
            return Image.fromarray(np.clip(values, 0, 65535).astype(np.uint16))
        return Image.fromarray(values.astype(np.int32))
    if mode in ("LA", "RGBA", "PA", "RGBa"):
        alpha = draw(st.sampled_from(["opaque", "clear", "ink-only", "noise"]))
        a = {"opaque": np.full(gray.shape, 255), "clear": np.zeros(gray.shape)}.get(alpha)
        if a is None:
            a = (
                (gray < 0.5) * 255
                if alpha == "ink-only"
                else np.random.default_rng(gray.size).integers(0, 256, gray.shape)
            )
        rgba = Image.merge("RGBA", (base, base, base, Image.fromarray(a.astype(np.uint8))))
        return rgba.convert(mode) if mode != "PA" else rgba.convert("P").convert("PA")
    return base.convert(mode)


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(img=images())
def test_any_image_gives_mnist_shape_or_a_digit_input_error(img: Image.Image) -> None:
    try:
        arr = prepare_image(img)
    except DigitInputError as exc:
        assert exc.message and not exc.too_large
        return
    assert_mnist_shaped(arr)
    assert float(arr.max()) == pytest.approx(1.0)  # the strongest ink is full ink, as in MNIST


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(img=images(), fmt=st.sampled_from(["PNG", "JPEG", "WEBP", "GIF", "BMP"]), quality=st.integers(1, 95))
def test_any_encoded_image_gives_mnist_shape_or_a_digit_input_error(img: Image.Image, fmt: str, quality: int) -> None:
    out = io.BytesIO()
    try:
        img.save(out, format=fmt, **({"quality": quality} if fmt in ("JPEG", "WEBP") else {}))
    except (OSError, ValueError, KeyError):
        assume(False)  # Pillow cannot write this mode in this format: nothing to send
    try:
        arr = image_bytes_to_array(out.getvalue(), **LIMITS)
    except DigitInputError:
        return
    assert_mnist_shaped(arr)


@st.composite
def damaged_images(draw: st.DrawFn) -> bytes:
    """Real encodings, truncated or with bytes overwritten; or bytes that only start like an image."""
    img = draw(images())
    fmt = draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP"]))
    out = io.BytesIO()
    try:
        img.convert("RGB").save(out, format=fmt)
    except OSError:
        assume(False)
    data = bytearray(out.getvalue())
    damage = draw(st.sampled_from(["truncate", "overwrite", "header-only"]))
    if damage == "truncate":
        return bytes(data[: draw(st.integers(0, max(len(data) - 1, 0)))])
    if damage == "header-only":
        return bytes(data[:16]) + draw(st.binary(max_size=256))
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(data=st.one_of(damaged_images(), st.binary(max_size=2048)))
def test_damaged_or_random_bytes_give_only_digit_input_errors(data: bytes) -> None:
    try:
        arr = image_bytes_to_array(data, **LIMITS)
    except DigitInputError:
        return
    assert_mnist_shaped(arr)


@PROPERTY_SETTINGS
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: "data:image/png;base64," + b.hex())))
def test_any_base64_text_gives_bytes_or_a_digit_input_error(text: str) -> None:
    try:
        data = decode_base64(text, max_bytes=LIMITS["max_bytes"])
    except DigitInputError:
        return
    assert isinstance(data, bytes) and data


@PROPERTY_SETTINGS
@given(
    values=st.one_of(
        hnp.arrays(
            np.float64,
            st.sampled_from([(784,), (28, 28), (783,), (28, 27), (2, 392)]),
            elements=st.floats(allow_nan=True, allow_infinity=True),
        ),
        st.lists(st.one_of(st.floats(-10, 300), st.lists(st.floats(0, 255), max_size=30)), max_size=40),
    ),
    value_range=st.sampled_from(["0-255", "0-1"]),
)
def test_any_pixel_array_gives_mnist_shape_or_a_digit_input_error(values: object, value_range: str) -> None:
    payload = values.tolist() if isinstance(values, np.ndarray) else values
    try:
        arr = pixels_to_array(payload, value_range=value_range)  # type: ignore[arg-type]
    except DigitInputError:
        return
    assert_mnist_shaped(arr)


@st.composite
def drawings(draw: st.DrawFn) -> np.ndarray:
    """A digit-like drawing: ink strokes on a uniform background with a one-pixel clear border, in 0..1."""
    height, width = draw(st.integers(8, 80)), draw(st.integers(8, 80))
    background, ink = draw(st.sampled_from([(0.0, 1.0), (1.0, 0.0), (0.1, 0.9), (0.95, 0.2)]))
    gray = np.full((height, width), background, dtype=np.float32)
    for _ in range(draw(st.integers(1, 3))):
        r0, r1 = sorted(draw(st.tuples(st.integers(1, height - 2), st.integers(1, height - 2))))
        c0, c1 = sorted(draw(st.tuples(st.integers(1, width - 2), st.integers(1, width - 2))))
        gray[r0 : r1 + 1, c0 : c1 + 1] = ink
    return gray


@PROPERTY_SETTINGS
@given(gray=drawings())
def test_polarity_does_not_matter(gray: np.ndarray) -> None:
    """Dark ink on paper and light ink on black prepare to the same MNIST array (white ink on black)."""
    np.testing.assert_allclose(prepare_gray(gray), prepare_gray(1.0 - gray), atol=1e-5)


@PROPERTY_SETTINGS
@given(gray=drawings(), pads=st.tuples(*[st.integers(0, 40)] * 4))
def test_position_on_the_canvas_does_not_matter(gray: np.ndarray, pads: tuple[int, int, int, int]) -> None:
    """More background around the digit (a bigger canvas, the digit off-centre) changes nothing."""
    top, bottom, left, right = pads
    padded = np.pad(gray, ((top, bottom), (left, right)), constant_values=float(gray[0, 0]))
    np.testing.assert_allclose(prepare_gray(padded), prepare_gray(gray), atol=1e-5)


@PROPERTY_SETTINGS
@given(gray=drawings())
def test_ink_fits_20x20_and_its_centre_of_mass_is_mnists(gray: np.ndarray) -> None:
    arr = prepare_gray(gray)
    rows, cols = np.nonzero(arr.any(axis=1))[0], np.nonzero(arr.any(axis=0))[0]
    assert rows[-1] - rows[0] + 1 <= 20 + 2 and cols[-1] - cols[0] + 1 <= 20 + 2  # Lanczos rings by a pixel
    if arr[0].any() or arr[-1].any() or arr[:, 0].any() or arr[:, -1].any():
        return  # ink lopsided enough that centring its mass pushed some off the field (MNIST clips too)
    mass = arr.sum()
    com_r = float((arr.sum(axis=1) * np.arange(SIDE)).sum() / mass)
    com_c = float((arr.sum(axis=0) * np.arange(SIDE)).sum() / mass)
    assert abs(com_r - CENTRE) <= 0.5 + 1e-4 and abs(com_c - CENTRE) <= 0.5 + 1e-4  # placement rounds to a pixel


@PROPERTY_SETTINGS
@given(
    small=hnp.arrays(np.float32, st.tuples(st.integers(1, 20), st.integers(1, 20)), elements=st.floats(0, 1, width=32))
)
def test_centre_by_mass_puts_the_centre_of_mass_on_mnists_centre(small: np.ndarray) -> None:
    assume(small.sum() > 1e-3)
    out = centre_by_mass(small)
    assert out.shape == (SIDE, SIDE)
    assert out.sum() <= small.sum() * (1 + 1e-5)
    if out.sum() >= small.sum() * (1 - 1e-5):  # nothing fell off the field: the placement is exact to a rounding
        com_r = float((out.sum(axis=1) * np.arange(SIDE)).sum() / out.sum())
        com_c = float((out.sum(axis=0) * np.arange(SIDE)).sum() / out.sum())
        assert abs(com_r - CENTRE) <= 0.5 + 1e-4 and abs(com_c - CENTRE) <= 0.5 + 1e-4
