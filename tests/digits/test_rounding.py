"""Significant-digit rounding for JSON answers: the right digits, and short decimals when printed."""

from __future__ import annotations

import json
from decimal import Decimal

import numpy as np

from service.digits.rounding import round_significant, rounded_list


def test_rounds_to_significant_digits_at_every_magnitude() -> None:
    values = np.array([0.012345678906440735, -1.23456789, 123456.7, 9.99996, -0.0049999, 7.0, 3.14159e-12])
    assert round_significant(values, 4).tolist() == [0.01235, -1.235, 123500.0, 10.0, -0.005, 7.0, 3.142e-12]


def test_zeros_and_non_finite_values_stay() -> None:
    out = round_significant(np.array([0.0, -0.0, np.inf, -np.inf, np.nan]), 3)
    assert out[:4].tolist() == [0.0, -0.0, np.inf, -np.inf] and np.isnan(out[4])


def test_random_weights_print_short_and_stay_within_half_a_unit() -> None:
    weights = np.random.default_rng(0).normal(0, 0.05, size=(16, 28, 28)).astype(np.float32)
    rounded = rounded_list(weights, 4)
    assert np.asarray(rounded).shape == weights.shape
    relative = np.abs(np.asarray(rounded) - weights) / np.abs(weights)
    assert relative.max() <= 5e-4 + 1e-12
    printed = [json.dumps(v) for v in np.asarray(rounded).ravel().tolist()]  # as the JSON answer writes them
    assert max(len(Decimal(p).normalize().as_tuple().digits) for p in printed) == 4
