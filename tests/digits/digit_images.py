"""Image helpers for the digit tests: MNIST arrays to PNG/JPEG bytes, and to "real" drawings on paper."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image


def to_uint8(arr: np.ndarray) -> np.ndarray:
    return np.asarray(np.clip(np.rint(arr * 255), 0, 255), dtype=np.uint8)


def encode(img: Image.Image, fmt: str = "PNG", **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def mnist_png(arr: np.ndarray) -> bytes:
    """The digit exactly as MNIST stores it: 28x28, white on black."""
    return encode(Image.fromarray(to_uint8(arr), mode="L"))


def drawing_on_paper(
    arr: np.ndarray, *, scale: int = 12, canvas: tuple[int, int] = (900, 640), at: tuple[int, int] = (520, 40)
) -> Image.Image:
    """The digit as someone might draw it: large, black ink on white, far from the centre of a big canvas."""
    big = Image.fromarray(to_uint8(arr), mode="L").resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    ink_on_white = Image.eval(big, lambda v: 255 - v)
    page = Image.new("L", canvas, 255)
    page.paste(ink_on_white, at)
    return page


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
