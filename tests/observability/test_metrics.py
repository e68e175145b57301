"""/metrics: Prometheus text that prometheus_client's own parser reads, with counters that move with traffic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, frozenset[tuple[str, str]]]


async def scrape(client: httpx.AsyncClient) -> dict[Key, float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values: dict[Key, float] = {}
    for family in text_string_to_metric_families(response.text):
        assert family.name.startswith("genai_"), family.name
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return values


async def scrape_when(
    client: httpx.AsyncClient, ready: Callable[[dict[Key, float]], bool], seconds: float = 10.0
) -> dict[Key, float]:
    """Scrape until `ready` holds: the engine thread records a generation's metrics just after the client has its last byte."""
    deadline = time.monotonic() + seconds
    while True:
        samples = await scrape(client)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.05)


def value(samples: dict[Key, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict[Key, float], name: str, **labels: str) -> float:
    """Sum over every label set that contains `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


async def test_counters_move_with_traffic(client: httpx.AsyncClient) -> None:
    before = await scrape(client)

    completion = await client.post(
        "/v1/completions", json={"prompt": "The capital of France is", "max_tokens": 3, "temperature": 0}
    )
    assert completion.status_code == 200
    assert (await client.post("/tokenize", json={"text": "hello"})).status_code == 200
    assert (await client.get("/no/such/page")).status_code == 404
    pixels = np.zeros(784, dtype=np.uint8).tolist()
    infer = await client.post(
        "/v2/models/mnist/infer",
        json={"inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": pixels}]},
    )
    assert infer.status_code == 200

    after = await scrape_when(
        client,
        lambda s: (
            total(s, "genai_generations_total") > total(before, "genai_generations_total")
            and total(s, "genai_batch_size_count") >= total(before, "genai_batch_size_count") + 2
        ),
    )

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("genai_http_requests_total", method="POST", route="/v1/completions", status="200") == 1
    assert delta("genai_http_requests_total", method="POST", route="/tokenize", status="200") == 1
    assert delta("genai_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert delta("genai_http_requests_total", route="/v2/models/{model_name}/infer", status="200") == 1
    assert delta("genai_http_request_duration_seconds_count", method="POST", route="/v1/completions") == 1
    assert delta("genai_http_request_duration_seconds_bucket", route="/v1/completions", le="+Inf") == 1
    assert delta("genai_generated_tokens_total") == 3
    assert delta("genai_prompt_tokens_total") == 5
    assert delta("genai_generations_total", finish_reason="length") == 1
    assert delta("genai_time_to_first_token_seconds_count") == 1
    assert delta("genai_inter_token_latency_seconds_count") == 2
    assert delta("genai_batch_size_count") >= 2
    assert delta("genai_generation_tokens_per_request_sum") == 3
    assert delta("genai_digit_predictions_total", endpoint="/v2/models/mnist/infer") == 1

    assert value(after, "genai_requests_running") == 0
    assert value(after, "genai_requests_waiting") == 0
    assert value(after, "genai_model_load_seconds", model="language") > 0
    assert value(after, "genai_model_load_seconds", model="digits") > 0
    assert value(after, "genai_ready") == 1


async def test_native_digits_endpoint_counts_predictions(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    response = await client.post("/classify-digit", json={"pixels": [0] * 783 + [255]})
    assert response.status_code == 200
    after = await scrape(client)
    assert total(after, "genai_digit_predictions_total") - total(before, "genai_digit_predictions_total") == 1


async def test_stream_latency_is_recorded_once(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0, "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        lines = [line async for line in response.aiter_lines()]
    assert "data: [DONE]" in lines
    after = await scrape_when(
        client, lambda s: total(s, "genai_generations_total") > total(before, "genai_generations_total")
    )
    route = "/v1/chat/completions"
    assert (
        total(after, "genai_http_requests_total", route=route, status="200")
        - total(before, "genai_http_requests_total", route=route, status="200")
        == 1
    )
    assert total(after, "genai_generated_tokens_total") - total(before, "genai_generated_tokens_total") == 2


@pytest.mark.parametrize("path", ["/metrics"])
async def test_metrics_need_no_key_and_have_help(client: httpx.AsyncClient, path: str) -> None:
    text = (await client.get(path)).text
    assert "# HELP genai_time_to_first_token_seconds" in text
    assert "# TYPE genai_http_requests_total counter" in text


async def test_label_values_stay_bounded(client: httpx.AsyncClient) -> None:
    """Raw paths and made-up methods never become label values (a scraper's memory depends on it)."""
    for i in range(3):
        await client.get(f"/made/up/{i}")
        await client.request(f"BREW{i}", "/health")
    samples = await scrape(client)
    routes = {dict(labels).get("route") for name, labels in samples if name == "genai_http_requests_total"}
    methods = {dict(labels).get("method") for name, labels in samples if name == "genai_http_requests_total"}
    assert not any(route and route.startswith("/made/") for route in routes)
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert "other" in methods


async def test_prompt_lookup_drafts_are_counted(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    prompt = "Monday, Tuesday, Wednesday, Thursday, Friday. Monday, Tuesday, Wednesday,"
    response = await client.post("/generate", json={"prompt": prompt, "max_new_tokens": 24, "ignore_eos": True})
    assert response.status_code == 200
    after = await scrape(client)
    accepted = value(after, "genai_draft_tokens_total", outcome="accepted") - value(
        before, "genai_draft_tokens_total", outcome="accepted"
    )
    rejected = value(after, "genai_draft_tokens_total", outcome="rejected") - value(
        before, "genai_draft_tokens_total", outcome="rejected"
    )
    engine = (await client.get("/info")).json()["engine"]
    assert accepted > 0 and rejected >= 0
    assert value(after, "genai_draft_tokens_total", outcome="accepted") == engine["accepted_draft_tokens"]
