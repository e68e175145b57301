"""`BlasLimiter`: a prediction's matrix products run on one BLAS thread, one holder at a time, and the
process's BLAS threads come back afterwards."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from threadpoolctl import threadpool_info

from service.digits.model import BlasLimiter, DigitClassifier


def _blas_threads() -> list[int]:
    return [int(lib["num_threads"]) for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_one_thread_inside_and_the_previous_count_after() -> None:
    before = _blas_threads()
    assert before, "numpy's BLAS should be visible to threadpoolctl"
    limiter = BlasLimiter()
    with limiter.one_thread():
        assert _blas_threads() == [1] * len(before)
    assert _blas_threads() == before


def test_holders_take_turns() -> None:
    limiter = BlasLimiter()
    entered = threading.Event()

    def hold() -> None:
        with limiter.one_thread():
            entered.set()

    with limiter.one_thread():
        other = threading.Thread(target=hold)
        other.start()
        assert not entered.wait(timeout=0.3)  # waits for the lock while this block holds it
    other.join(timeout=10)
    assert entered.is_set()


class _RecordingLimiter(BlasLimiter):
    """Notes the BLAS thread counts each time a holder is inside."""

    def __init__(self) -> None:
        super().__init__()
        self.threads_seen: list[list[int]] = []

    @contextmanager
    def one_thread(self) -> Iterator[None]:
        with super().one_thread():
            self.threads_seen.append(_blas_threads())
            yield


def test_predictions_run_under_their_classifiers_limiter(
    classifier: DigitClassifier, mnist: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = mnist
    limiter = _RecordingLimiter()
    shared = DigitClassifier(classifier.weights, classifier.biases, activation=classifier.activation, blas=limiter)
    assert classifier.path is not None  # the fixture loads the shipped model from its file
    assert shared.blas is limiter and DigitClassifier.load(classifier.path, blas=limiter).blas is limiter
    np.testing.assert_array_equal(shared.predict_proba(x[:8]), classifier.predict_proba(x[:8]))
    assert limiter.threads_seen and all(set(seen) == {1} for seen in limiter.threads_seen)
    assert DigitClassifier(classifier.weights, classifier.biases).blas is not classifier.blas  # one each unless shared
