"""OpenAI's sampling knobs on /v1 through the `openai` package: `logit_bias`, `presence_penalty`,
`frequency_penalty` (OpenAI's names and bounds), `min_p` (vLLM's extension), the same engine and bounds
as the native routes; and chat's `continue_final_message` (vLLM's name) for prefill."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    import openai

    from service.language.model import LanguageModel
else:
    openai = pytest.importorskip("openai")

PROMPT = "The capital of France is"
PARIS = 7042
QUESTION: Any = {"role": "user", "content": "What is the capital of France?"}
PREFILL: Any = {"role": "assistant", "content": "Sure! The answer is"}


async def test_logit_bias_through_the_sdk(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    plain = await aclient.completions.create(model=model_id, prompt=PROMPT, max_tokens=1, temperature=0, logprobs=1)
    assert plain.choices[0].logprobs is not None and plain.choices[0].logprobs.tokens == [" Paris"]
    banned = await aclient.completions.create(
        model=model_id, prompt=PROMPT, max_tokens=1, temperature=0, logprobs=1, logit_bias={str(PARIS): -100}
    )
    assert banned.choices[0].logprobs is not None and banned.choices[0].logprobs.tokens != [" Paris"]
    forced = await aclient.chat.completions.create(
        model=model_id, messages=[QUESTION], max_tokens=3, temperature=0, logit_bias={"504": 100}
    )
    assert forced.choices[0].message.content == "TheTheThe"


async def test_v1_knobs_give_what_native_generate_gives(
    aclient: openai.AsyncOpenAI, client: httpx.AsyncClient, model_id: str
) -> None:
    """The same knobs, seeded, on /v1/completions (SDK) and /generate: one engine, one sampler."""
    knobs: dict[str, Any] = {
        "presence_penalty": 0.7,
        "frequency_penalty": 1.1,
        "logit_bias": {str(PARIS): -2, "260": 1.5},
        "top_p": 0.95,
        "seed": 21,
        "temperature": 0.9,
    }
    completion = await aclient.completions.create(
        model=model_id, prompt=PROMPT, max_tokens=10, extra_body={"min_p": 0.05, "ignore_eos": True}, **knobs
    )
    native = await client.post(
        "/generate",
        json={"prompt": PROMPT, "max_new_tokens": 10, "do_sample": True, "min_p": 0.05, "ignore_eos": True, **knobs},
    )
    assert native.status_code == 200, native.text
    assert completion.choices[0].text == native.json()["text"]
    unpenalized = await aclient.completions.create(
        model=model_id,
        prompt=PROMPT,
        max_tokens=10,
        seed=21,
        temperature=0.9,
        top_p=0.95,
        extra_body={"ignore_eos": True},
    )
    assert unpenalized.choices[0].text != completion.choices[0].text  # the knobs did something


async def test_penalties_on_chat_through_the_sdk(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    """Strong frequency and presence penalties, greedy: the most repeated token repeats less than without them."""
    counting = {"role": "user", "content": "Count from 1 to 30, separated by commas."}
    request: dict[str, Any] = {"model": model_id, "messages": [counting], "max_tokens": 40, "temperature": 0}
    plain = await aclient.chat.completions.create(**request, logprobs=True)
    penalized = await aclient.chat.completions.create(
        **request, logprobs=True, frequency_penalty=2.0, presence_penalty=2.0
    )

    def most_repeated(response: Any) -> int:
        tokens = [t.token for t in response.choices[0].logprobs.content]
        return max(tokens.count(t) for t in tokens)

    assert most_repeated(plain) >= 5  # the premise: plain greedy repeats the commas
    assert most_repeated(penalized) < most_repeated(plain)


async def test_continue_final_message_continues_the_prefill(
    aclient: openai.AsyncOpenAI, model_id: str, language_model: LanguageModel
) -> None:
    continued = await aclient.chat.completions.create(
        model=model_id,
        messages=[QUESTION, PREFILL],
        max_tokens=6,
        temperature=0,
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    # the same prompt by hand: the template without the generation prompt, cut after the prefill
    rendered = language_model.render_chat([QUESTION, PREFILL], add_generation_prompt=False)
    open_turn = rendered[: rendered.rindex(PREFILL["content"]) + len(PREFILL["content"])]
    assert rendered[len(open_turn) :].startswith("<|im_end|>")
    by_hand = await aclient.completions.create(model=model_id, prompt=open_turn, max_tokens=6, temperature=0)
    assert continued.choices[0].message.content == by_hand.choices[0].text
    assert continued.usage is not None and by_hand.usage is not None
    assert continued.usage.prompt_tokens == by_hand.usage.prompt_tokens
    # add_generation_prompt left out means false with continue_final_message
    implied = await aclient.chat.completions.create(
        model=model_id,
        messages=[QUESTION, PREFILL],
        max_tokens=6,
        temperature=0,
        extra_body={"continue_final_message": True},
    )
    assert implied.choices[0].message.content == continued.choices[0].message.content
    answered = await aclient.chat.completions.create(
        model=model_id, messages=[QUESTION, PREFILL], max_tokens=6, temperature=0
    )
    assert answered.usage is not None and answered.usage.prompt_tokens > continued.usage.prompt_tokens


async def test_continue_final_message_streams(client: httpx.AsyncClient) -> None:
    body = {
        "messages": [QUESTION, PREFILL],
        "max_tokens": 4,
        "temperature": 0,
        "continue_final_message": True,
    }
    whole = (await client.post("/v1/chat/completions", json=body)).json()["choices"][0]["message"]["content"]
    text = ""
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line.removeprefix("data: "))["choices"]:
                    text += choice["delta"].get("content") or ""
    assert text == whole


async def test_contradictions_and_bad_values_get_400_naming_the_field(
    aclient: openai.AsyncOpenAI, client: httpx.AsyncClient, model_id: str
) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        await aclient.chat.completions.create(
            model=model_id,
            messages=[QUESTION, PREFILL],
            max_tokens=2,
            extra_body={"continue_final_message": True, "add_generation_prompt": True},
        )
    assert bad.value.body is not None and bad.value.body["param"] == "continue_final_message"  # type: ignore[index]
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/chat/completions", {"messages": [QUESTION], "presence_penalty": -2.01}, "presence_penalty"),
        ("/v1/chat/completions", {"messages": [QUESTION], "frequency_penalty": 2.5}, "frequency_penalty"),
        ("/v1/chat/completions", {"messages": [QUESTION], "min_p": 2}, "min_p"),
        ("/v1/chat/completions", {"messages": [QUESTION], "logit_bias": {"x": 1}}, "logit_bias"),
        ("/v1/chat/completions", {"messages": [QUESTION], "logit_bias": {"9999999": 1}}, "logit_bias"),
        ("/v1/completions", {"prompt": PROMPT, "logit_bias": {"5": -101}}, "logit_bias.5"),
        ("/v1/completions", {"prompt": PROMPT, "continue_final_message": True}, "continue_final_message"),
    ]
    for path, body, param in cases:
        response = await client.post(path, json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param, body
    ok = await client.post(
        "/v1/completions", json={"prompt": PROMPT, "max_tokens": 1, "presence_penalty": 0, "logit_bias": {}}
    )
    assert ok.status_code == 200  # the neutral values, as clients that send every field send them
