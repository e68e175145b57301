"""Usage in `/v1` streams, as OpenAI sends it.

With `stream_options.include_usage` every chunk carries `"usage": null` except the last, which has
empty `choices` and the usage of the whole request; without it no chunk has a `usage` field at all.
Clients that add up the usage of every chunk (LangChain's `ChatOpenAI(stream_usage=True)`) then count
each token once. `continuous_usage_stats` (vLLM's extension) puts the usage so far on every chunk.

LangChain and the `openai` SDK talk to a real uvicorn (`threaded_server`) over a socket, as users run them.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

langchain_openai = pytest.importorskip("langchain_openai")

PROMPT = "The capital of France is"
MESSAGES = [{"role": "user", "content": "Name three colours of the rainbow."}]
MAX_TOKENS = 12


def _usage(usage: Any) -> tuple[int, int, int]:
    return (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)


# ---- LangChain ---------------------------------------------------------------------------------


def _chat_model(base: str, model_id: str, **kwargs: Any):  # type: ignore[no-untyped-def]
    return langchain_openai.ChatOpenAI(
        base_url=f"{base}/v1",
        api_key="x",
        model=model_id,
        temperature=0,
        max_tokens=MAX_TOKENS,
        max_retries=0,
        timeout=120,
        **kwargs,
    )


def test_langchain_stream_usage_counts_each_token_once(threaded_server: str, model_id: str) -> None:
    llm = _chat_model(threaded_server, model_id, stream_usage=True)
    whole = llm.invoke(MESSAGES)
    assert whole.usage_metadata is not None and whole.usage_metadata["output_tokens"] > 0

    aggregate = None
    pieces = 0
    for piece in llm.stream(MESSAGES):
        aggregate = piece if aggregate is None else aggregate + piece
        pieces += 1
    assert aggregate is not None and pieces > 2
    assert aggregate.content == whole.content
    streamed = aggregate.usage_metadata
    assert streamed is not None, "no usage reached LangChain"
    expected = whole.usage_metadata
    assert (streamed["input_tokens"], streamed["output_tokens"], streamed["total_tokens"]) == (
        expected["input_tokens"],
        expected["output_tokens"],
        expected["total_tokens"],
    )


def test_langchain_stream_without_usage_reports_none(threaded_server: str, model_id: str) -> None:
    # stream_usage=False: LangChain does not ask for usage, and the stream must not volunteer any.
    llm = _chat_model(threaded_server, model_id, stream_usage=False)
    aggregate = None
    for piece in llm.stream(MESSAGES):
        aggregate = piece if aggregate is None else aggregate + piece
    assert aggregate is not None and aggregate.content
    assert not aggregate.usage_metadata


# ---- the openai SDK ----------------------------------------------------------------------------


def test_sdk_chat_stream_usage_only_on_the_last_chunk(sync_client: openai.OpenAI, model_id: str) -> None:
    kwargs: dict[str, Any] = {"model": model_id, "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0}
    whole = sync_client.chat.completions.create(**kwargs)
    chunks = list(sync_client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert _usage(chunks[-1].usage) == _usage(whole.usage)
    assert all(c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    plain = list(sync_client.chat.completions.create(**kwargs, stream=True))
    assert all(c.usage is None for c in plain) and all(c.choices for c in plain)


def test_sdk_completions_stream_usage_only_on_the_last_chunk(sync_client: openai.OpenAI, model_id: str) -> None:
    kwargs: dict[str, Any] = {"model": model_id, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}
    whole = sync_client.completions.create(**kwargs)
    chunks = list(sync_client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert _usage(chunks[-1].usage) == _usage(whole.usage)
    assert all(c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    plain = list(sync_client.completions.create(**kwargs, stream=True))
    assert all(c.usage is None for c in plain) and all(c.choices for c in plain)


# ---- the wire format ---------------------------------------------------------------------------


async def _chunks(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    async with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, await response.aread()
        lines = [line.removeprefix("data: ") async for line in response.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


_BODIES: dict[str, tuple[str, dict[str, Any]]] = {
    "completions": ("/v1/completions", {"prompt": PROMPT, "max_tokens": 5, "temperature": 0}),
    "completions n=2, two prompts": (
        "/v1/completions",
        {"prompt": [PROMPT, "Once upon a time"], "n": 2, "max_tokens": 4, "temperature": 0},
    ),
    "completions echo only": ("/v1/completions", {"prompt": PROMPT, "max_tokens": 0, "echo": True}),
    "completions echo + tokens": (
        "/v1/completions",
        {"prompt": PROMPT, "max_tokens": 3, "echo": True, "logprobs": 1, "temperature": 0},
    ),
    "chat": ("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 5, "temperature": 0}),
    "chat n=3": (
        "/v1/chat/completions",
        {"messages": MESSAGES, "n": 3, "max_tokens": 4, "temperature": 0.8, "seed": 7},
    ),
}


async def _whole_usage(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, int]:
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    usage: dict[str, int] = response.json()["usage"]
    return usage


@pytest.mark.parametrize("case", list(_BODIES))
async def test_include_usage_null_on_every_chunk_but_the_last(client: httpx.AsyncClient, case: str) -> None:
    path, body = _BODIES[case]
    chunks = await _chunks(client, path, {**body, "stream_options": {"include_usage": True}})
    *rest, last = chunks
    assert rest and all("usage" in c and c["usage"] is None for c in rest), [c.get("usage") for c in rest]
    assert all(c["choices"] for c in rest)
    assert last["choices"] == [] and last["usage"] == await _whole_usage(client, path, body)


@pytest.mark.parametrize("case", list(_BODIES))
@pytest.mark.parametrize("options", [None, {"include_usage": False, "continuous_usage_stats": True}])
async def test_no_usage_anywhere_without_include_usage(
    client: httpx.AsyncClient, case: str, options: dict[str, bool] | None
) -> None:
    path, body = _BODIES[case]
    if options is not None:
        body = {**body, "stream_options": options}
    chunks = await _chunks(client, path, body)
    assert chunks and all("usage" not in c for c in chunks), [c.get("usage") for c in chunks]
    assert all(c["choices"] for c in chunks)
    reasons = [choice["finish_reason"] for c in chunks for choice in c["choices"] if choice["finish_reason"]]
    assert len(reasons) == body.get("n", 1) * (len(body["prompt"]) if isinstance(body.get("prompt"), list) else 1)


@pytest.mark.parametrize("case", list(_BODIES))
async def test_continuous_usage_stats_give_the_usage_so_far(client: httpx.AsyncClient, case: str) -> None:
    # vLLM's extension, with include_usage: every chunk carries the request's usage so far; the last is the total.
    path, body = _BODIES[case]
    chunks = await _chunks(
        client, path, {**body, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    )
    *rest, last = chunks
    whole = await _whole_usage(client, path, body)
    assert last["choices"] == [] and last["usage"] == whole
    previous = 0
    for chunk in rest:
        usage = chunk["usage"]
        assert usage is not None and usage["prompt_tokens"] == whole["prompt_tokens"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert previous <= usage["completion_tokens"] <= whole["completion_tokens"]
        previous = usage["completion_tokens"]
    assert previous == whole["completion_tokens"]  # the finish chunks have counted every token
