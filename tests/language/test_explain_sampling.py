"""The sampler, step by step (`explain`): each stage is the distribution the chooser computed, in its
order; the last is the one the token was drawn from, so `u` re-draws the token; entropy, surprisal,
margin and perplexity are of the model's own distribution.

First over the scripted batch of test_engine_unit.py (no model: expected stages computed here from the
scripted logits, independently of the service's functions), then over HTTP on the float32 app.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
from typing import Any

import httpx
import pytest
import torch
from scripted_engine import (
    VOCAB,
    MakeEngine,
    ScriptedBatch,
    counting,
    finished,
    scripted_logits,
    tokens,
)
from sse import parse_sse

from service.language.events import TokenEvent
from service.language.sampling import SamplingParams


def redraw(top: list[Any], u: float) -> tuple[int, int] | None:
    """Inverse CDF as documented: walk the stage's tokens likeliest first, the first whose running total
    of probability exceeds u; None when `top` ends before the total passes u."""
    total = 0.0
    for rank, candidate in enumerate(top):
        total += candidate["probability"] if isinstance(candidate, dict) else candidate.probability
        if total > u:
            return (candidate["id"] if isinstance(candidate, dict) else candidate.id), rank
    return None


# ---- over the scripted batch --------------------------------------------------------------


def expected_stages(logits: torch.Tensor, seen: list[int], params: SamplingParams) -> list[tuple[str, torch.Tensor]]:
    """The sampler's stages computed by hand, in float64: penalty, temperature, top-k, top-p."""
    scores = logits.double().clone()
    stages = [("model", scores.softmax(-1))]
    if params.repetition_penalty != 1.0:
        for i in set(seen):
            s = float(scores[i])
            scores[i] = s * params.repetition_penalty if s < 0 else s / params.repetition_penalty
        stages.append(("repetition_penalty", scores.softmax(-1)))
    if not params.do_sample:
        return stages
    probs = (scores / params.temperature).softmax(-1)
    if params.temperature != 1.0:
        stages.append(("temperature", probs))
    if params.top_k:
        keep = torch.zeros_like(probs, dtype=torch.bool)
        keep[torch.sort(probs, descending=True).indices[: params.top_k]] = True
        probs = torch.where(keep, probs, 0.0)
        probs = probs / probs.sum()
        stages.append(("top_k", probs))
    if params.top_p < 1.0:
        order = torch.sort(probs, descending=True).indices
        running, keep = 0.0, torch.zeros_like(probs, dtype=torch.bool)
        for i in order.tolist():
            keep[i] = True
            running += float(probs[i])
            if running >= params.top_p:
                break
        probs = torch.where(keep, probs, 0.0)
        probs = probs / probs.sum()
        stages.append(("top_p", probs))
    return stages


def check_event(event: TokenEvent, context: list[int], params: SamplingParams) -> None:
    assert event.explain is not None
    logits = scripted_logits(context, counting)[:VOCAB]
    expected = expected_stages(logits, context, params)
    assert [s.name for s in event.explain.stages] == [name for name, _ in expected]
    previous = None
    for stage, (_, probs) in zip(event.explain.stages, expected, strict=True):
        assert stage.kept == int((probs > 0).sum())
        removed = 0.0 if previous is None else float((previous - probs).clamp(min=0).sum())
        assert stage.removed_mass == pytest.approx(removed, abs=1e-6)
        if previous is not None and stage.name in ("top_k", "top_p"):  # a cut removes exactly the cut tokens' mass
            assert stage.removed_mass == pytest.approx(float(previous[probs == 0].sum()), abs=1e-6)
        listed = [c.id for c in stage.top]
        assert [c.probability for c in stage.top] == pytest.approx(probs[listed].tolist(), abs=1e-6)
        assert len(listed) == min(params.top_alternatives, stage.kept)
        if stage.kept <= len(listed):  # every kept token listed: they carry all the mass
            assert sum(c.probability for c in stage.top) == pytest.approx(1.0, abs=1e-5)
        previous = probs
    model = expected[0][1]
    assert event.explain.entropy == pytest.approx(float(-(model * model.log()).sum()), abs=1e-6)
    assert event.explain.surprisal == pytest.approx(-math.log(float(model[event.id])), abs=1e-6)
    two = torch.topk(model, 2).values
    assert event.explain.margin == pytest.approx(float(two[0] - two[1]), abs=1e-6)
    draw = event.explain.draw
    if params.do_sample:
        assert not draw.greedy and draw.u is not None and 0.0 <= draw.u < 1.0
        assert redraw(event.explain.stages[-1].top, draw.u) == (event.id, draw.rank)
    else:
        assert draw.greedy and draw.u is None and draw.rank == 0
        assert event.id == event.explain.stages[-1].top[0].id


@pytest.mark.parametrize(
    "knobs",
    [
        {"temperature": 1.3},
        {"temperature": 0.7, "top_k": 6},
        {"top_p": 0.8},
        {"repetition_penalty": 1.5, "temperature": 1.2, "top_k": 12, "top_p": 0.9},
    ],
)
async def test_sampled_steps_show_each_stage_and_the_draw_that_picked_the_token(
    make_engine: MakeEngine, knobs: dict[str, Any]
) -> None:
    engine, _ = make_engine()
    params = SamplingParams(
        max_new_tokens=16, do_sample=True, seed=11, ignore_eos=True, top_alternatives=VOCAB, explain=True, **knobs
    )
    prompt = tokens("explain")
    events, finish = await finished(engine.submit(prompt, params))
    for event in events:
        check_event(event, prompt + finish.ids[: event.index], params)
    assert len({e.explain.draw.rank for e in events if e.explain}) > 1  # not always the likeliest
    assert finish.perplexity == pytest.approx(
        math.exp(sum(e.explain.surprisal for e in events if e.explain) / len(events))
    )
    plain, plain_finish = await finished(engine.submit(prompt, dataclasses.replace(params, explain=False)))
    assert [e.id for e in plain] == finish.ids and all(e.explain is None for e in plain)  # explaining draws the same
    assert plain_finish.perplexity is None


async def test_greedy_steps_are_the_model_stage_and_keep_prompt_lookup(make_engine: MakeEngine) -> None:
    prompt = tokens("abcabcab")
    for batch, lookup in ((ScriptedBatch(), 0), (ScriptedBatch(supports_drafts=True), 4)):
        engine, _ = make_engine(batch, prompt_lookup_tokens=lookup)
        params = SamplingParams(max_new_tokens=12, ignore_eos=True, top_alternatives=4, explain=True)
        events, finish = await finished(engine.submit(prompt, params))
        assert (
            finish.ids
            == (await finished(engine.submit(prompt, SamplingParams(max_new_tokens=12, ignore_eos=True))))[1].ids
        )
        for event in events:
            check_event(event, prompt + finish.ids[: event.index], params)
        penalized = SamplingParams(
            max_new_tokens=6, ignore_eos=True, top_alternatives=VOCAB, repetition_penalty=2.0, explain=True
        )
        events, finish = await finished(engine.submit(prompt, penalized))
        for event in events:
            check_event(event, prompt + finish.ids[: event.index], penalized)


async def test_next_token_stages_are_those_of_a_first_sampled_token(make_engine: MakeEngine) -> None:
    engine, _ = make_engine()
    prompt = tokens("next")
    params = SamplingParams(
        max_new_tokens=1,
        do_sample=True,
        seed=3,
        temperature=0.8,
        top_k=9,
        top_p=0.7,
        repetition_penalty=1.3,
        top_alternatives=VOCAB,
        explain=True,
    )
    [event], _ = await finished(engine.submit(prompt, params))
    answer = await asyncio.wait_for(engine.next_token_distribution(prompt, VOCAB, 0.8, explain_with=params), 10)
    assert answer.stages is not None and event.explain is not None
    assert answer.stages == event.explain.stages
    plain = await asyncio.wait_for(engine.next_token_distribution(prompt, 3, 0.8), 10)
    assert plain.stages is None


# ---- over HTTP ------------------------------------------------------------------------------


def check_stage_sums(stage: dict[str, Any]) -> None:
    probabilities = [c["probability"] for c in stage["top"]]
    assert probabilities == sorted(probabilities, reverse=True) and all(p > 0 for p in probabilities)
    assert sum(probabilities) <= 1 + 1e-9
    if stage["kept"] <= len(stage["top"]):  # every kept token listed: they carry all the mass
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)


def check_cut(previous: dict[str, Any], stage: dict[str, Any], top_k: int = 0, top_p: float = 1.0) -> bool:
    """A top-k or top-p stage against the stage before; False when the kept tokens are not all listed there."""
    kept = stage["kept"]
    if kept > len(previous["top"]):
        return False
    before = [c["probability"] for c in previous["top"]]
    assert [c["id"] for c in stage["top"]] == [
        c["id"] for c in previous["top"][: len(stage["top"])]
    ]  # the likeliest stay
    assert stage["removed_mass"] == pytest.approx(1.0 - sum(before[:kept]), abs=1e-6)
    if top_k:
        assert kept == top_k
    if top_p < 1.0:
        assert sum(before[:kept]) >= top_p - 1e-6  # reaches top_p ...
        assert kept == 1 or sum(before[: kept - 1]) < top_p + 1e-6  # ... and is the smallest set that does
    return True


SAMPLED = {
    "prompt": "Once upon a time",
    "max_new_tokens": 10,
    "do_sample": True,
    "seed": 5,
    "ignore_eos": True,
    "explain": True,
    "top_alternatives": 20,
}


@pytest.mark.parametrize(
    ("knobs", "names"),
    [
        ({"temperature": 0.8, "top_p": 0.6}, ["model", "temperature", "top_p"]),
        ({"top_k": 8}, ["model", "top_k"]),
        ({"temperature": 0.6}, ["model", "temperature"]),
    ],
)
async def test_generate_explains_each_sampled_step(
    client: httpx.AsyncClient, knobs: dict[str, Any], names: list[str]
) -> None:
    body = (await client.post("/generate", json={**SAMPLED, **knobs})).json()
    steps = body["steps"]
    assert [s["id"] for s in steps] == body["ids"]
    redrawn = cut_checked = 0
    for step in steps:
        explain = step["explain"]
        stages = explain["stages"]
        assert [s["name"] for s in stages] == names
        assert stages[0]["kept"] > 40_000 and stages[0]["removed_mass"] == 0.0
        for stage in stages:
            check_stage_sums(stage)
            assert len(stage["top"]) == min(20, stage["kept"])
        for previous, stage in itertools.pairwise(stages):
            if stage["name"] in ("top_k", "top_p"):
                cut_checked += check_cut(previous, stage, knobs.get("top_k", 0), knobs.get("top_p", 1.0))
        model = stages[0]["top"]
        assert explain["margin"] == pytest.approx(model[0]["probability"] - model[1]["probability"])
        assert explain["surprisal"] == pytest.approx(-step["logprob"], abs=1e-4)
        draw = explain["draw"]
        assert draw["greedy"] is False and 0 <= draw["u"] < 1
        found = redraw(stages[-1]["top"], draw["u"])
        if found is None:  # drawn beyond the listed tokens: they must not reach u
            assert (
                draw["rank"] >= len(stages[-1]["top"])
                and sum(c["probability"] for c in stages[-1]["top"]) <= draw["u"] + 1e-12
            )
        else:
            assert found == (step["id"], draw["rank"])
            redrawn += 1
    assert redrawn >= len(steps) // 2
    if len(names) > 1 and names[-1] in ("top_k", "top_p"):
        assert cut_checked > 0
    surprisals = [s["explain"]["surprisal"] for s in steps]
    assert body["perplexity"] == pytest.approx(math.exp(sum(surprisals) / len(surprisals)), rel=1e-9)
    plain = (await client.post("/generate", json={**SAMPLED, **knobs, "explain": False})).json()
    assert plain["ids"] == body["ids"]  # explaining does not change the draw
    assert "perplexity" not in plain and all("explain" not in s for s in plain["steps"])


async def test_greedy_explained_is_the_model_stage_and_its_entropy(client: httpx.AsyncClient, app: Any) -> None:
    prompt = "The capital of France is"
    body = (await client.post("/generate", json={"prompt": prompt, "max_new_tokens": 4, "explain": True})).json()
    assert body["ids"] == (await client.post("/generate", json={"prompt": prompt, "max_new_tokens": 4})).json()["ids"]
    for step in body["steps"]:
        explain = step["explain"]
        assert [s["name"] for s in explain["stages"]] == ["model"]
        assert explain["draw"] == {"greedy": True, "rank": 0}
        assert explain["stages"][0]["top"][0]["id"] == step["id"]
        assert len(explain["stages"][0]["top"]) == 5 == len(step["alternatives"])  # explain's default
    lm = app.state.models.language
    logits = await app.state.models.engine.next_token_logits([lm.encode(prompt)])
    p = torch.softmax(logits[0, : lm.vocab_size].double(), dim=-1)
    first = body["steps"][0]["explain"]
    assert first["entropy"] == pytest.approx(float(-(p * p.log()).sum()), abs=1e-4)
    assert first["surprisal"] == pytest.approx(-math.log(float(p[body["ids"][0]])), abs=1e-4)
    next_token = (await client.post("/next-token-probs", json={"prompt": prompt, "top_k": 5})).json()
    model_top = first["stages"][0]["top"]
    assert [c["id"] for c in model_top] == [c["id"] for c in next_token["candidates"]]
    # float64 softmax here, float32 log-softmax there: equal within float32's error over 49,152 terms
    assert [c["probability"] for c in model_top] == pytest.approx(
        [c["probability"] for c in next_token["candidates"]], abs=2e-5
    )


async def test_the_stream_explains_every_token_and_ends_with_the_perplexity(client: httpx.AsyncClient) -> None:
    request = {**SAMPLED, "temperature": 0.9, "top_k": 30, "top_p": 0.9, "repetition_penalty": 1.1, "max_new_tokens": 6}
    async with client.stream("POST", "/generate", json={**request, "stream": True}) as response:
        assert response.status_code == 200
        events = parse_sse((await response.aread()).decode())
    tokens_ = [data for name, data in events if name == "token"]
    [done] = [data for name, data in events if name == "done"]
    whole = (await client.post("/generate", json=request)).json()
    assert [t["id"] for t in tokens_] == done["ids"] == whole["ids"]
    for token, step in zip(tokens_, whole["steps"], strict=True):
        assert [s["name"] for s in token["explain"]["stages"]] == [
            "model",
            "repetition_penalty",
            "temperature",
            "top_k",
            "top_p",
        ]
        assert token["explain"]["draw"] == step["explain"]["draw"]  # the same seeded draws
        assert token["explain"]["entropy"] == pytest.approx(step["explain"]["entropy"], abs=1e-9)
    assert done["perplexity"] == pytest.approx(whole["perplexity"], rel=1e-9)
    assert done["perplexity"] == pytest.approx(
        math.exp(sum(t["explain"]["surprisal"] for t in tokens_) / len(tokens_)), rel=1e-9
    )
    async with client.stream("POST", "/generate", json={**request, "explain": False, "stream": True}) as response:
        plain = parse_sse((await response.aread()).decode())
    assert all("explain" not in data for name, data in plain if name == "token")
    assert all("perplexity" not in data for name, data in plain if name == "done")


async def test_next_token_stages_show_each_setting(client: httpx.AsyncClient) -> None:
    prompt = "Once upon a time, in a small village,"
    request = {
        "prompt": prompt,
        "top_k": 20,
        "explain": True,
        "temperature": 1.5,
        "sample_top_k": 12,
        "top_p": 0.5,
        "repetition_penalty": 1.3,
    }
    body = (await client.post("/next-token-probs", json=request)).json()
    stages = body["stages"]
    assert [s["name"] for s in stages] == ["model", "repetition_penalty", "temperature", "top_k", "top_p"]
    for stage in stages:
        check_stage_sums(stage)
    assert stages[1]["removed_mass"] > 0 and stages[2]["removed_mass"] > 0  # reshaped: some mass moved
    assert check_cut(stages[2], stages[3], top_k=12)
    assert check_cut(stages[3], stages[4], top_p=0.5)
    plain = (await client.post("/next-token-probs", json={"prompt": prompt, "top_k": 20})).json()
    assert set(plain) == {"candidates", "prompt_tokens", "temperature", "model"}  # today's answer, unasked
    assert [c["id"] for c in stages[0]["top"]] == [c["id"] for c in plain["candidates"]]
    assert [c["probability"] for c in stages[0]["top"]] == pytest.approx(
        [c["probability"] for c in plain["candidates"]], abs=2e-5
    )
    first = (
        await client.post(
            "/generate",
            json={
                "prompt": prompt,
                "max_new_tokens": 1,
                "do_sample": True,
                "seed": 1,
                "explain": True,
                "top_alternatives": 20,
                "temperature": 1.5,
                "top_k": 12,
                "top_p": 0.5,
                "repetition_penalty": 1.3,
            },
        )
    ).json()
    generated = first["steps"][0]["explain"]["stages"]
    assert [(s["name"], s["kept"]) for s in generated] == [(s["name"], s["kept"]) for s in stages]
    for a, b in zip(generated, stages, strict=True):
        assert [c["id"] for c in a["top"]] == [c["id"] for c in b["top"]]
        assert [c["probability"] for c in a["top"]] == pytest.approx([c["probability"] for c in b["top"]], abs=1e-5)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/next-token-probs", {"prompt": "x", "top_p": 0.5}, "top_p"),
        ("/next-token-probs", {"prompt": "x", "sample_top_k": 3}, "sample_top_k"),
        ("/next-token-probs", {"prompt": "x", "repetition_penalty": 1.2}, "repetition_penalty"),
        ("/next-token-probs", {"prompt": "x", "explain": True, "top_k": 21}, "top_k"),
        ("/next-token-probs", {"prompt": "x", "explain": True, "top_p": 0}, "top_p"),
        ("/next-token-probs", {"prompt": "x", "explain": "yes"}, "explain"),
        ("/generate", {"prompt": "x", "explain": True, "top_alternatives": 21}, "top_alternatives"),
        ("/generate", {"prompt": "x", "explain": 1}, "explain"),
    ],
)
async def test_bad_explain_requests_get_422_naming_the_field(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], param: str
) -> None:
    response = await client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param


async def test_openapi_describes_the_explanation(client: httpx.AsyncClient) -> None:
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    assert (
        "explain" in schemas["GenerateRequest"]["properties"]
        and schemas["GenerateRequest"]["properties"]["explain"]["description"]
    )
    assert schemas["NextTokenRequest"]["properties"]["explain"]["description"]
    for name in ("StepExplanation", "SamplerStage"):
        assert schemas[name]["examples"] and schemas[name]["description"]
        assert all(field.get("description") or field.get("$ref") for field in schemas[name]["properties"].values()), (
            name
        )
    assert "total variation" in schemas["SamplerStage"]["properties"]["removed_mass"]["description"]
    assert schemas["SamplerDraw"]["properties"]["u"]["description"]
    assert (
        "perplexity" in schemas["GenerateResponse"]["properties"]
        and "stages" in schemas["NextTokenResponse"]["properties"]
    )
