"""/v1/chat/completions through the official `openai` client: chat template, logprobs, streaming, usage."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionTokenLogprob

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]


async def test_chat_matches_native_generate(
    aclient: openai.AsyncOpenAI, client: httpx.AsyncClient, model_id: str
) -> None:
    chat = await aclient.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=8, temperature=0)
    native = (await client.post("/generate", json={"messages": MESSAGES, "max_new_tokens": 8})).json()
    choice = chat.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == native["text"]
    assert "Paris" in (choice.message.content or "")
    assert chat.object == "chat.completion"
    assert chat.usage is not None
    assert chat.usage.prompt_tokens == native["usage"]["prompt_tokens"]
    assert chat.usage.completion_tokens == native["usage"]["completion_tokens"]


async def test_chat_logprobs(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    chat = await aclient.chat.completions.create(
        model=model_id,
        messages=MESSAGES,
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    choice = chat.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert len(content) == 4
    assert "".join(t.token for t in content) == choice.message.content
    for token in content:
        assert len(token.top_logprobs) == 2
        assert token.logprob == pytest.approx(token.top_logprobs[0].logprob, abs=1e-6)
        assert token.logprob <= 0
        assert bytes(token.bytes or []).decode("utf-8") == token.token


async def test_chat_stream_with_usage(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    whole = await aclient.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=6, temperature=0)
    stream = await aclient.chat.completions.create(
        model=model_id,
        messages=MESSAGES,
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks[:-1])  # as OpenAI: only the last, usage-only chunk has it
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    assert whole.usage is not None
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


async def test_chat_stream_logprobs_and_stop(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    stream = await aclient.chat.completions.create(
        model=model_id,
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,
        stream=True,
        logprobs=True,
        top_logprobs=1,
        stop=["Paris"],
    )
    tokens: list[ChatCompletionTokenLogprob] = []
    text, reason = "", None
    async for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.logprobs and choice.logprobs.content:
                tokens.extend(choice.logprobs.content)
            reason = choice.finish_reason or reason
    assert "Paris" not in text
    assert tokens and all(len(t.top_logprobs) == 1 for t in tokens)
    assert reason in ("stop", "length")


async def test_system_and_content_parts(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    chat = await aclient.chat.completions.create(
        model=model_id,
        messages=[
            {"role": "developer", "content": "Answer in one word."},
            {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
        ],
        max_completion_tokens=3,
        temperature=0,
    )
    assert chat.choices[0].message.content
    assert chat.usage is not None and chat.usage.completion_tokens <= 3


def test_sync_chat_stream_over_http(sync_client: openai.OpenAI, model_id: str) -> None:
    parts = []
    for chunk in sync_client.chat.completions.create(
        model=model_id, messages=MESSAGES, max_tokens=4, temperature=0, stream=True
    ):
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
    whole = sync_client.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=4, temperature=0)
    assert "".join(parts) == whole.choices[0].message.content
