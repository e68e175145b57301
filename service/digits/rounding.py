"""Rounding arrays to a few significant digits for JSON answers.

A float32 weight printed in full takes ~20 characters (`-0.012345678906440735`); to 4 significant
digits it takes ~8 and still draws the same picture. Rounding is done in numpy as integer / power of
ten, the nearest double to a short decimal, so the JSON encoder prints the short decimal.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# 10**0 .. 10**22 are exact doubles; built from Python ints so no `pow` rounding creeps in.
_POWERS_OF_TEN = tuple(float(10**k) for k in range(23))


def round_significant(values: np.ndarray, digits: int) -> np.ndarray:
    """`values` (any shape) rounded to `digits` significant digits, as float64; zeros and non-finite values unchanged."""
    x = np.asarray(values, dtype=np.float64)
    out = x.copy()
    finite = np.isfinite(x) & (x != 0)
    if not finite.any():
        return out
    v = x[finite]
    shift = digits - 1 - np.floor(np.log10(np.abs(v))).astype(np.int64)  # decimals to keep
    powers = np.array(_POWERS_OF_TEN)
    small = (shift >= 0) & (shift < len(_POWERS_OF_TEN))  # |v| < 10**digits: round to `shift` decimals
    result = v.copy()  # values too tiny for the table (below ~1e-19) stay as they are
    scale = powers[shift[small]]
    result[small] = np.rint(v[small] * scale) / scale
    large = (shift < 0) & (-shift < len(_POWERS_OF_TEN))  # round to tens, hundreds, ...
    scale = powers[-shift[large]]
    result[large] = np.rint(v[large] / scale) * scale
    out[finite] = result
    return out


def rounded_list(values: np.ndarray, digits: int) -> Any:
    """`round_significant(values, digits).tolist()`: Python floats nested as deep as `values` (hence Any), ready for JSON."""
    return round_significant(values, digits).tolist()
