"""Property tests for the sampling parameters (service/language/sampling.py), on random logit rows."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.language.sampling import (
    SamplingParams,
    TokenChooser,
    apply_repetition_penalty,
    filter_top_k_top_p,
    inverse_cdf,
    likeliest_first,
    stage_probabilities,
)

PROPERTY_SETTINGS = settings(
    max_examples=100, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)

# Logit rows as a model produces them: float32, finite, a few to a few hundred "tokens", with ties now and then.
logit_rows = hnp.arrays(
    np.float32,
    st.integers(2, 300),
    elements=st.one_of(st.floats(-30, 30, width=32), st.sampled_from([0.0, 1.0, -5.0])),
).map(torch.from_numpy)
distinct_logit_rows = hnp.arrays(
    np.float32, st.integers(2, 300), elements=st.floats(-30, 30, width=32), unique=True
).map(torch.from_numpy)
top_ks = st.integers(0, 400)
top_ps = st.one_of(st.just(1.0), st.floats(1e-6, 1.0, exclude_max=True))


def kept(logits: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(logits)


@PROPERTY_SETTINGS
@given(logits=logit_rows, top_k=top_ks, top_p=top_ps)
def test_filter_keeps_at_least_the_most_likely_token(logits: torch.Tensor, top_k: int, top_p: float) -> None:
    out = filter_top_k_top_p(logits, top_k, top_p)
    assert out.shape == logits.shape
    assert int(kept(out).sum()) >= 1
    assert float(out.max()) == float(logits.max())  # a most likely token (any one, when tied) is among them
    # Kept scores are untouched; the filter only masks.
    assert torch.equal(out[kept(out)], logits[kept(out)])


@PROPERTY_SETTINGS
@given(logits=distinct_logit_rows, top_k=top_ks)
def test_top_k_keeps_exactly_k_when_there_are_no_ties(logits: torch.Tensor, top_k: int) -> None:
    out = filter_top_k_top_p(logits, top_k, 1.0)
    expected = logits.numel() if top_k == 0 else min(top_k, logits.numel())
    assert int(kept(out).sum()) == expected
    # ... and they are the k largest.
    assert float(logits[kept(out)].min()) >= float(logits[~kept(out)].max()) if expected < logits.numel() else True


@PROPERTY_SETTINGS
@given(logits=logit_rows, top_k=st.integers(1, 400))
def test_top_k_with_ties_keeps_every_token_tied_with_the_kth(logits: torch.Tensor, top_k: int) -> None:
    out = filter_top_k_top_p(logits, top_k, 1.0)
    k = min(top_k, logits.numel())
    kth = float(torch.sort(logits, descending=True).values[k - 1])
    assert torch.equal(kept(out), logits >= kth)


@PROPERTY_SETTINGS
@given(logits=distinct_logit_rows, top_p=st.floats(1e-4, 1.0, exclude_max=True))
def test_top_p_keeps_the_smallest_nucleus_reaching_p(logits: torch.Tensor, top_p: float) -> None:
    probs = logits.double().softmax(-1)
    ordered = torch.sort(probs, descending=True).values
    cumulative = ordered.cumsum(-1)
    assume(bool((cumulative - top_p).abs().min() > 1e-4))  # no prefix mass within rounding of p: one right answer
    out = filter_top_k_top_p(logits, 0, top_p)
    n = int(kept(out).sum())
    expected = int((cumulative < top_p).sum()) + 1  # tokens until the running mass first reaches p
    assert n == min(expected, logits.numel())
    assert float(probs[kept(out)].sum()) >= top_p - 1e-6  # reaches p ...
    assert n == 1 or float(probs[kept(out)].sum() - probs[kept(out)].min()) < top_p + 1e-6  # ... and no token is spare
    assert bool(
        (probs[kept(out)].min() >= probs[~kept(out)].max()) if n < logits.numel() else True
    )  # the most likely ones


def _params(**kwargs: object) -> SamplingParams:
    return SamplingParams(**kwargs)  # type: ignore[arg-type]


sampling_params = st.builds(
    _params,
    do_sample=st.just(True),
    temperature=st.one_of(st.floats(0.05, 5.0), st.just(1.0)),
    top_k=top_ks,
    top_p=top_ps,
    repetition_penalty=st.one_of(st.just(1.0), st.floats(0.5, 2.0)),
    seed=st.integers(0, 2**63 - 1),
)


@PROPERTY_SETTINGS
@given(logits=logit_rows, params=sampling_params, seen=st.lists(st.integers(0, 1), max_size=4), steps=st.integers(1, 6))
def test_a_seeded_chooser_is_deterministic(
    logits: torch.Tensor, params: SamplingParams, seen: list[int], steps: int
) -> None:
    first, second = TokenChooser.create(params), TokenChooser.create(params)
    draws = [(first.choose(logits, seen), second.choose(logits, seen)) for _ in range(steps)]
    assert all(a == b for a, b in draws)
    assert all(0 <= a < logits.numel() for a, _ in draws)


@PROPERTY_SETTINGS
@given(logits=logit_rows, params=sampling_params)
def test_a_sampled_token_is_one_the_filters_keep(logits: torch.Tensor, params: SamplingParams) -> None:
    token = TokenChooser.create(params).choose(logits, [])
    allowed = filter_top_k_top_p((logits - logits.max()) / params.temperature, params.top_k, params.top_p)
    assert math.isfinite(float(allowed[token]))


@PROPERTY_SETTINGS
@given(
    logits=logit_rows,
    penalty=st.one_of(st.just(1.0), st.floats(0.5, 3.0)),
    seen=st.lists(st.integers(0, 299), max_size=8),
)
def test_greedy_is_the_argmax(logits: torch.Tensor, penalty: float, seen: list[int]) -> None:
    seen = [s for s in seen if s < logits.numel()]
    chooser = TokenChooser.create(_params(do_sample=False, repetition_penalty=penalty, seed=7))
    expected = logits if not seen else apply_repetition_penalty(logits, torch.tensor(seen), penalty)
    assert chooser.choose(logits, seen) == int(torch.argmax(expected))


@PROPERTY_SETTINGS
@given(
    logits=distinct_logit_rows,
    temperature=st.one_of(st.just(5e-324), st.floats(1e-320, 1e-30)),
    seed=st.integers(0, 2**32),
)
def test_a_vanishing_temperature_samples_the_argmax(logits: torch.Tensor, temperature: float, seed: int) -> None:
    """The limit of temperature -> 0 is greedy, however small the temperature (a fuzz finding: it was a NaN)."""
    chooser = TokenChooser.create(_params(do_sample=True, temperature=temperature, seed=seed))
    assert chooser.choose(logits, []) == int(torch.argmax(logits))


@PROPERTY_SETTINGS
@given(logits=logit_rows, penalty=st.floats(1.01, 5.0), seen=st.lists(st.integers(0, 299), min_size=1, max_size=8))
def test_repetition_penalty_moves_seen_scores_down_and_leaves_the_rest(
    logits: torch.Tensor, penalty: float, seen: list[int]
) -> None:
    seen = sorted({s for s in seen if s < logits.numel()})
    assume(seen)
    ids = torch.tensor(seen)
    discouraged = apply_repetition_penalty(logits, ids, penalty)
    encouraged = apply_repetition_penalty(logits, ids, 1.0 / penalty)
    unseen = torch.ones_like(logits, dtype=torch.bool)
    unseen[ids] = False
    assert torch.equal(discouraged[unseen], logits[unseen]) and torch.equal(encouraged[unseen], logits[unseen])
    assert bool((discouraged[ids] <= logits[ids]).all()) and bool((encouraged[ids] >= logits[ids]).all())
    # Zero stays zero either way, and the smallest subnormals (a fuzz finding: 1.4e-45 / 1.01 rounds back
    # to 1.4e-45 in IEEE float32) cannot move: only normal numbers must move strictly.
    moved = logits[ids].abs() >= torch.finfo(logits.dtype).tiny
    assert bool((discouraged[ids][moved] < logits[ids][moved]).all())
    # Seen tokens lose probability to unseen ones (or keep it, when nothing else is left).
    assert float(discouraged.softmax(-1)[ids].sum()) <= float(logits.softmax(-1)[ids].sum()) + 1e-6


def _walk_order(probs: torch.Tensor) -> list[int]:
    """Tokens with probability, likeliest first, ties by lower id: the documented order of a draw."""
    values = probs.tolist()
    return sorted((i for i, v in enumerate(values) if v > 0), key=lambda i: (-values[i], i))


@PROPERTY_SETTINGS
@given(logits=logit_rows, top_k=top_ks, top_p=top_ps, n=st.integers(1, 400))
def test_likeliest_first_lists_the_draw_order(logits: torch.Tensor, top_k: int, top_p: float, n: int) -> None:
    probs = stage_probabilities(filter_top_k_top_p(logits, top_k, top_p))  # ties and zeros both occur
    assert likeliest_first(probs, n).tolist() == _walk_order(probs)[:n]


@PROPERTY_SETTINGS
@given(
    logits=logit_rows,
    top_k=top_ks,
    top_p=top_ps,
    u=st.one_of(st.floats(0.0, 1.0, exclude_max=True), st.sampled_from([0.0, 0.999999999])),
)
def test_inverse_cdf_takes_the_first_running_total_past_u(
    logits: torch.Tensor, top_k: int, top_p: float, u: float
) -> None:
    probs = stage_probabilities(filter_top_k_top_p(logits, top_k, top_p))
    order = _walk_order(probs)
    running, expected = 0.0, (order[-1], len(order) - 1)  # rounding may leave the total at or below u
    for rank, token in enumerate(order):
        running += float(probs[token])
        if running > u:
            expected = (token, rank)
            break
    assert inverse_cdf(probs, u) == expected


@PROPERTY_SETTINGS
@given(logits=logit_rows, params=sampling_params, seen=st.lists(st.integers(0, 1), max_size=4), steps=st.integers(1, 4))
def test_an_explained_choice_is_the_same_choice_and_its_draw_repeats_it(
    logits: torch.Tensor, params: SamplingParams, seen: list[int], steps: int
) -> None:
    plain, explained = TokenChooser.create(params), TokenChooser.create(params)
    for _ in range(steps):
        token, trace = explained.choose_explained(logits, seen)
        assert token == plain.choose(logits, seen)
        last = stage_probabilities(trace.stages[-1].logits)
        assert trace.stages[0].name == "model" and torch.equal(trace.stages[0].logits, logits)
        if trace.u is None:
            assert trace.rank == 0 and token == int(torch.argmax(trace.stages[-1].logits))
        else:
            assert inverse_cdf(last, trace.u) == (token, trace.rank)
            assert _walk_order(last)[trace.rank] == token
