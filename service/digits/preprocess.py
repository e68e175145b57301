"""Turn client input (pixel arrays, encoded images) into MNIST-style 28x28 arrays, and say why when we cannot.

MNIST digits are white ink on black, cropped to the ink, scaled to fit 20x20 keeping the aspect ratio
(anti-aliased), then placed in 28x28 so that the centre of mass sits at the centre. A real drawing (dark
ink on a white canvas, a photo of paper) only looks like MNIST to the model after the same steps, so
`prepare_image` repeats them. Nothing here knows about HTTP: problems raise `DigitInputError`, which
`service.errors` maps to 422 (or 413 when `too_large`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import math
import re
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.digits.exceptions import DigitInputError

SIDE = 28
FIT = 20  # MNIST scales the digit to fit a 20x20 box ...
CENTRE = 14.0  # ... and puts its centre of mass here (row/column index; measured on MNIST itself)
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
ValueRange = Literal["0-255", "0-1"]

_WORKING_SIDE = 1024  # larger images are box-reduced to about this first: same result, bounded cost
MIN_CONTRAST = 0.08  # darkest-to-lightest spread (of 1.0) below which an image counts as blank
_NOISE_FLOOR = 0.2  # ink weaker than this (after background removal) is paper texture or JPEG noise
_TARGET_STROKE = 2.0  # MNIST strokes are about 2-3 px wide at 28x28; thinner ones are thickened
_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)


# --- pixel arrays ------------------------------------------------------------------------


def pixels_to_array(
    values: Sequence[object], *, value_range: ValueRange = "0-255", param: str = "pixels"
) -> np.ndarray:
    """Validate 784 numbers (or 28 rows of 28) and return a (28, 28) float32 array scaled to 0..1."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError):
        raise DigitInputError(
            f"{param} must be 784 numbers or 28 rows of 28 numbers (rows of unequal length given)", param=param
        ) from None
    if arr.shape not in ((SIDE * SIDE,), (SIDE, SIDE)):
        raise DigitInputError(
            f"{param} must be 784 numbers or 28 rows of 28 numbers; got shape {list(arr.shape)}", param=param
        )
    if not np.all(np.isfinite(arr)):
        raise DigitInputError(f"{param} contains a non-finite number (NaN or infinity)", param=param)
    top = 255.0 if value_range == "0-255" else 1.0
    if arr.min() < 0 or arr.max() > top:
        raise DigitInputError(
            f"{param} values must lie in {value_range} (value_range={value_range!r}); got {arr.min():g}..{arr.max():g}",
            param=param,
        )
    return (arr.reshape(SIDE, SIDE) / top).astype(np.float32)


# --- encoded images ----------------------------------------------------------------------


def decode_base64(text: str, *, max_bytes: int, param: str = "image") -> bytes:
    """Base64 (optionally a `data:image/...;base64,` URL) to bytes, refusing oversized input before decoding it."""
    payload = _DATA_URL.sub("", text.strip(), count=1)
    payload = "".join(payload.split())  # line-wrapped base64 is common
    if not payload:
        raise DigitInputError(f"{param} is empty", param=param)
    if len(payload) * 3 // 4 > max_bytes + 2:
        raise DigitInputError(
            f"{param} is larger than the limit of {max_bytes} bytes (GENAI_DIGITS_MAX_IMAGE_BYTES)",
            param=param,
            too_large=True,
        )
    try:
        data = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise DigitInputError(f"{param} is not valid base64", param=param) from None
    if not data:
        raise DigitInputError(f"{param} is empty", param=param)
    return data


def open_image(data: bytes, *, max_bytes: int, max_pixels: int, param: str = "image") -> Image.Image:
    """Decode PNG/JPEG (or WebP/GIF/BMP) bytes, checking size limits on the header before decoding pixels."""
    if not data:
        raise DigitInputError(f"{param} is empty", param=param)
    if len(data) > max_bytes:
        raise DigitInputError(
            f"{param} is {len(data)} bytes; the limit is {max_bytes} (GENAI_DIGITS_MAX_IMAGE_BYTES)",
            param=param,
            too_large=True,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
            width, height = img.size
            if width * height > max_pixels:
                raise DigitInputError(
                    f"{param} is {width}x{height} = {width * height} pixels; the limit is {max_pixels} "
                    "(GENAI_DIGITS_MAX_IMAGE_PIXELS)",
                    param=param,
                    too_large=True,
                )
            if width == 0 or height == 0:
                raise DigitInputError(f"{param} has no pixels", param=param)
            img.load()
    except DigitInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DigitInputError(f"{param} has too many pixels to decode", param=param, too_large=True) from None
    except UnidentifiedImageError:
        raise DigitInputError(f"{param} is not a PNG, JPEG, WebP, GIF or BMP image", param=param) from None
    except Exception as exc:  # Pillow raises many types for damaged files (OSError, SyntaxError, ValueError, ...)
        raise DigitInputError(
            f"{param} could not be decoded (damaged or truncated image: {exc})", param=param
        ) from None
    return img


def normalise_mode(img: Image.Image) -> Image.Image:
    """Bring any decoded mode to one of L, LA, RGB, RGBA or F, so later steps (and `reduce`) handle it."""
    with contextlib.suppress(Exception):  # a broken EXIF block should not lose the picture
        img = ImageOps.exif_transpose(img) or img  # phone photos carry their rotation in EXIF
    if img.mode in ("L", "LA", "RGB", "RGBA", "F"):
        return img
    if img.mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode.startswith("I"):
        arr = np.asarray(img, dtype=np.float32)
        return Image.fromarray(arr, mode="F")
    if img.mode in ("PA", "RGBa", "La"):
        return img.convert("RGBA")
    return img.convert("RGB")  # 1, CMYK, YCbCr, LAB, HSV ...


def image_to_gray(img: Image.Image) -> np.ndarray:
    """Grayscale float32 array in 0..1 (1 = white) from an image in L, LA, RGB, RGBA or F mode.

    Transparent areas become the background: a browser canvas that was never filled is transparent with
    coloured strokes, and flattening it naively turns the whole picture black. So transparency is
    composited onto white, unless the picture is mostly transparent with light strokes (then onto black).
    """
    if img.mode in ("RGBA", "LA"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3]
        lum = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if alpha.min() < 1.0:
            opaque = alpha >= 0.5
            mostly_transparent = opaque.mean() < 0.5
            ink_is_dark = not opaque.any() or float(lum[opaque].mean()) < 0.5
            background = 1.0 if (not mostly_transparent or ink_is_dark) else 0.0
            lum = lum * alpha + background * (1.0 - alpha)
        return lum.astype(np.float32)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        top = float(arr.max())
        return arr / top if top > 0 else arr
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def _border(a: np.ndarray) -> np.ndarray:
    return np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])


def _stroke_width(mask: np.ndarray) -> float:
    """Rough stroke width in pixels: area over half the boundary length (a stroke has two sides)."""
    area = int(mask.sum())
    if area == 0:
        return 0.0
    padded = np.pad(mask, 1)
    interior = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    boundary = area - int(interior.sum())
    return 2.0 * area / max(boundary, 1)


def _resize(a: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize((width, height), Image.Resampling.LANCZOS))


def prepare_gray(gray: np.ndarray, *, param: str = "image") -> np.ndarray:
    """MNIST's preparation of a grayscale picture (any size, any polarity) -> (28, 28) float32, ink = 1."""
    lo, hi = float(gray.min()), float(gray.max())
    if hi - lo < MIN_CONTRAST:
        raise DigitInputError(f"{param} is blank: no digit found (the image has almost no contrast)", param=param)
    g = (gray - lo) / (hi - lo)
    if float(np.median(_border(g))) > 0.5:  # light background: dark ink on paper or canvas
        g = 1.0 - g
    background = float(np.median(_border(g)))
    if background > 0.9:
        raise DigitInputError(f"{param} is blank: no digit found", param=param)
    ink = np.clip((g - background) / (1.0 - background), 0.0, 1.0)
    ink = np.clip((ink - _NOISE_FLOOR) / (1.0 - _NOISE_FLOOR), 0.0, 1.0)
    rows, cols = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
    if rows.size == 0:
        raise DigitInputError(f"{param} is blank: no digit found", param=param)
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = ink.shape
    scale = FIT / max(height, width)

    if scale < 1.0:  # thin pen strokes would all but vanish when shrunk: thicken them first
        stroke = _stroke_width(ink >= 0.5)
        if 0 < stroke * scale < _TARGET_STROKE * 0.75:
            grow = math.ceil(_TARGET_STROKE / scale - stroke)
            if grow >= 1:
                from scipy import ndimage  # a scikit-learn dependency

                size = grow + 1
                ink = ndimage.maximum_filter(np.pad(ink, size), size=size)
                nz_r, nz_c = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
                ink = ink[nz_r[0] : nz_r[-1] + 1, nz_c[0] : nz_c[-1] + 1]
                height, width = ink.shape
                scale = FIT / max(height, width)

    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    small = np.clip(_resize(ink, new_w, new_h), 0.0, None)
    peak = float(small.max())
    if peak <= 0:
        raise DigitInputError(f"{param} is blank: no digit found", param=param)
    small = np.clip(small / peak, 0.0, 1.0)
    return centre_by_mass(small)


def centre_by_mass(small: np.ndarray) -> np.ndarray:
    """Place a digit (at most 28x28) in a 28x28 field so that its centre of mass lands on MNIST's centre."""
    mass = float(small.sum())
    r = np.arange(small.shape[0], dtype=np.float64)
    c = np.arange(small.shape[1], dtype=np.float64)
    com_r = float((small.sum(axis=1) * r).sum() / mass)
    com_c = float((small.sum(axis=0) * c).sum() / mass)
    top, left = round(CENTRE - com_r), round(CENTRE - com_c)
    out = np.zeros((SIDE, SIDE), dtype=np.float32)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + small.shape[0], SIDE), min(left + small.shape[1], SIDE)
    if r1 > r0 and c1 > c0:
        out[r0:r1, c0:c1] = small[r0 - top : r1 - top, c0 - left : c1 - left]
    return out


def prepare_image(img: Image.Image, *, param: str = "image") -> np.ndarray:
    """A decoded image of any size -> MNIST-style (28, 28) float32 array in 0..1."""
    img = normalise_mode(img)
    longest = max(img.size)
    if longest > 2 * _WORKING_SIDE:
        img = img.reduce(longest // _WORKING_SIDE)  # box filter in C: keeps big photos cheap
    return prepare_gray(image_to_gray(img), param=param)


def image_bytes_to_array(data: bytes, *, max_bytes: int, max_pixels: int, param: str = "image") -> np.ndarray:
    """Encoded image bytes -> MNIST-style (28, 28) array: decode with limits, then prepare."""
    img = open_image(data, max_bytes=max_bytes, max_pixels=max_pixels, param=param)
    try:
        return prepare_image(img, param=param)
    except (OSError, ValueError, SyntaxError) as exc:  # damage Pillow only notices while converting
        if isinstance(exc, DigitInputError):
            raise
        raise DigitInputError(f"{param} could not be processed ({type(exc).__name__}: {exc})", param=param) from None
