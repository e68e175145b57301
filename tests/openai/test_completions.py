"""/v1/completions through the official `openai` client: text, logprobs, echo, streaming, seeds, usage."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

import httpx
import openai
import pytest

if TYPE_CHECKING:
    from service.language.model import LanguageModel

PROMPT = "The capital of France is"


class _SeededCompletion(TypedDict):
    """The arguments the seeded-sampling test passes to every create call, typed so they unpack into it."""

    model: str
    prompt: str
    max_tokens: int
    temperature: float
    seed: int


async def test_models_list(aclient: openai.AsyncOpenAI, model_id: str, language_model: LanguageModel) -> None:
    models = await aclient.models.list()
    assert [m.id for m in models.data] == [model_id]
    assert models.data[0].object == "model"
    one = await aclient.models.retrieve(model_id)
    assert one.id == model_id


async def test_greedy_completion_matches_native_generate(
    aclient: openai.AsyncOpenAI, client: httpx.AsyncClient, model_id: str
) -> None:
    completion = await aclient.completions.create(model=model_id, prompt=PROMPT, max_tokens=6, temperature=0)
    native = (await client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 6})).json()
    choice = completion.choices[0]
    assert choice.text == native["text"]
    assert choice.text.startswith(" Paris")
    assert choice.finish_reason == "length"
    assert completion.object == "text_completion" and completion.model == model_id
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 6)
    assert completion.usage.total_tokens == 11


async def test_logprobs_match_next_token_probs(
    aclient: openai.AsyncOpenAI, client: httpx.AsyncClient, model_id: str
) -> None:
    completion = await aclient.completions.create(
        model=model_id, prompt=PROMPT, max_tokens=3, temperature=0, logprobs=3
    )
    lp = completion.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs and lp.text_offset is not None
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 3
    assert "".join(lp.tokens) == completion.choices[0].text
    assert lp.text_offset == [0, len(lp.tokens[0]), len(lp.tokens[0]) + len(lp.tokens[1])]
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) == 3
        assert chosen == pytest.approx(max(top.values()), abs=1e-6)  # greedy: the chosen token is the most likely
    direct = (await client.post("/next-token-probs", json={"prompt": PROMPT, "top_k": 3})).json()["candidates"]
    assert lp.tokens[0] == direct[0]["token"] == " Paris"
    assert lp.token_logprobs[0] == pytest.approx(direct[0]["logprob"], abs=1e-4)
    assert {c["token"]: c["logprob"] for c in direct} == pytest.approx(lp.top_logprobs[0], abs=1e-4)


async def test_echo_scores_the_prompt(aclient: openai.AsyncOpenAI, client: httpx.AsyncClient, model_id: str) -> None:
    # lm-eval-harness style: echo + logprobs + max_tokens 0 gives the prompt's own token logprobs.
    scored = await aclient.completions.create(
        model=model_id, prompt=PROMPT + " Paris", max_tokens=0, echo=True, logprobs=1
    )
    lp = scored.choices[0].logprobs
    assert scored.choices[0].text == PROMPT + " Paris"
    assert lp is not None and lp.tokens == ["The", " capital", " of", " France", " is", " Paris"]
    assert lp.token_logprobs is not None and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    direct = (await client.post("/next-token-probs", json={"prompt": PROMPT, "top_k": 1})).json()["candidates"][0]
    assert direct["token"] == " Paris"
    assert lp.token_logprobs[-1] == pytest.approx(direct["logprob"], abs=1e-4)
    assert scored.usage is not None and scored.usage.completion_tokens == 0 and scored.usage.prompt_tokens == 6

    echoed = await aclient.completions.create(model=model_id, prompt=PROMPT, max_tokens=2, temperature=0, echo=True)
    assert echoed.choices[0].text.startswith(PROMPT + " Paris")


async def test_stream_equals_whole_and_ends_with_usage(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    whole = await aclient.completions.create(model=model_id, prompt=PROMPT, max_tokens=6, temperature=0)
    stream = await aclient.completions.create(model=model_id, prompt=PROMPT, max_tokens=6, temperature=0, stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)  # usage only with stream_options.include_usage, as OpenAI
    stream = await aclient.completions.create(
        model=model_id, prompt=PROMPT, max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 6 and last.usage.prompt_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])


async def test_stream_with_logprobs(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    stream = await aclient.completions.create(
        model=model_id, prompt=PROMPT, max_tokens=3, temperature=0, logprobs=2, stream=True
    )
    tokens = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].logprobs is not None and chunk.choices[0].logprobs.tokens:
            tokens.extend(chunk.choices[0].logprobs.tokens)
            assert len(chunk.choices[0].logprobs.top_logprobs[0]) == 2  # type: ignore[index]
    assert len(tokens) == 3 and tokens[0] == " Paris"


async def test_raw_stream_is_openai_sse(client: httpx.AsyncClient) -> None:
    body = {
        "prompt": PROMPT,
        "max_tokens": 2,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    import json

    usage_chunk = json.loads(lines[-2].removeprefix("data: "))
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 2


async def test_seeded_sampling_repeats_and_n_choices(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    kwargs: _SeededCompletion = {
        "model": model_id,
        "prompt": "Once upon a time",
        "max_tokens": 6,
        "temperature": 1.0,
        "seed": 1234,
    }
    first = await aclient.completions.create(**kwargs)
    second = await aclient.completions.create(**kwargs)
    assert first.choices[0].text == second.choices[0].text
    several = await aclient.completions.create(**kwargs, n=2)
    assert [c.index for c in several.choices] == [0, 1]
    assert several.choices[0].text == first.choices[0].text  # choice i samples with seed + i
    assert several.usage is not None and several.usage.completion_tokens == 12 and several.usage.prompt_tokens == 4


async def test_batch_of_prompts_and_token_ids(
    aclient: openai.AsyncOpenAI, model_id: str, language_model: LanguageModel
) -> None:
    ids = language_model.encode(PROMPT)
    batch = await aclient.completions.create(model=model_id, prompt=[PROMPT, "2 + 2 ="], max_tokens=2, temperature=0)
    by_ids = await aclient.completions.create(model=model_id, prompt=ids, max_tokens=2, temperature=0)
    assert [c.index for c in batch.choices] == [0, 1]
    assert batch.choices[0].text == by_ids.choices[0].text


async def test_streamed_choices_each_finish(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    stream = await aclient.completions.create(
        model=model_id, prompt=["a", "b"], max_tokens=2, temperature=0, stream=True
    )
    finished = {}
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert finished == {0: "length", 1: "length"}


def test_sync_client_over_http(sync_client: openai.OpenAI, model_id: str) -> None:
    completion = sync_client.completions.create(model=model_id, prompt=PROMPT, max_tokens=3, temperature=0)
    assert completion.choices[0].text.startswith(" Paris")
    streamed = "".join(
        chunk.choices[0].text
        for chunk in sync_client.completions.create(
            model=model_id, prompt=PROMPT, max_tokens=3, temperature=0, stream=True
        )
        if chunk.choices
    )
    assert streamed == completion.choices[0].text
    raw = sync_client.completions.with_raw_response.create(model=model_id, prompt=PROMPT, max_tokens=1, temperature=0)
    assert raw.headers.get("x-request-id")
    parsed = raw.parse()
    assert parsed.usage is not None
    assert parsed.usage.completion_tokens == 1
