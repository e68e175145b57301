"""Prompt lookup: drafts copied from earlier in the text, checked in one pass, never change greedy output
(float32 here: token for token what one-token steps and `model.generate` give)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import httpx
import pytest
import torch
from fastapi import FastAPI

from service.config import Settings
from service.language.prompt_lookup import draft_from_context

if TYPE_CHECKING:
    from service.language.model import LanguageModel

REPETITIVE = "Monday, Tuesday, Wednesday, Thursday, Friday. Monday, Tuesday, Wednesday,"


def test_a_draft_is_what_followed_the_latest_earlier_occurrence_of_the_last_tokens() -> None:
    assert draft_from_context([1, 2, 3, 9, 1, 2, 3, 8, 5, 1, 2, 3], 2) == [8, 5]  # the latest match wins
    assert draft_from_context([7, 1, 2, 3, 4, 5, 6, 1, 2], 3) == [3, 4, 5]
    assert draft_from_context([4, 5, 6, 5], 4) == [6, 5]  # a one-token match when nothing longer matches
    assert draft_from_context([1, 2, 3, 4], 4) == []  # the last token never occurred before
    assert draft_from_context([1, 2, 1], 0) == []
    assert draft_from_context([1, 2] + [9] * 20 + [1], 3, window=10) == []  # outside the window


@pytest.fixture(scope="module")
async def plain_client(
    make_app: Callable[[Settings], Awaitable[FastAPI]], settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    """The same model with prompt lookup off: one token per step."""
    app = await make_app(settings.model_copy(update={"prompt_lookup_tokens": 0}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://plain", timeout=120) as http:
        yield http


async def test_drafted_greedy_output_equals_one_token_steps_and_model_generate(
    client: httpx.AsyncClient, plain_client: httpx.AsyncClient, language_model: LanguageModel
) -> None:
    assert Settings().prompt_lookup_tokens > 0  # on by default
    before = (await client.get("/info")).json()["engine"]
    request = {"prompt": REPETITIVE, "max_new_tokens": 40, "ignore_eos": True}
    drafted = (await client.post("/generate", json=request)).json()
    after = (await client.get("/info")).json()["engine"]
    assert after["accepted_draft_tokens"] > before["accepted_draft_tokens"]  # drafts were taken...
    assert after["steps"] - before["steps"] < 40  # ...so fewer steps than tokens
    plain = (await plain_client.post("/generate", json=request)).json()
    assert drafted["ids"] == plain["ids"]
    ids = torch.tensor([language_model.encode(REPETITIVE)])
    with torch.inference_mode():
        expected = language_model.module().generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=40,
            min_new_tokens=40,
            do_sample=False,
            pad_token_id=language_model.tokenizer.pad_token_id,
        )
    assert drafted["ids"] == expected[0, ids.shape[1] :].tolist()
    assert drafted["text"] == plain["text"]


async def test_lengths_stops_and_alternatives_hold_when_several_tokens_come_in_one_step(
    client: httpx.AsyncClient, plain_client: httpx.AsyncClient
) -> None:
    for max_new_tokens in (1, 2, 3, 7):
        body = (
            await client.post(
                "/generate", json={"prompt": REPETITIVE, "max_new_tokens": max_new_tokens, "ignore_eos": True}
            )
        ).json()
        assert len(body["ids"]) == max_new_tokens and body["finish_reason"] == "length"
    request = {"prompt": REPETITIVE, "max_new_tokens": 40, "stop": ["Friday"], "top_alternatives": 2}
    drafted = (await client.post("/generate", json=request)).json()
    plain = (await plain_client.post("/generate", json=request)).json()
    assert drafted["finish_reason"] == plain["finish_reason"] == "stop"
    assert drafted["text"] == plain["text"] and "Friday" not in drafted["text"]
    assert [step["id"] for step in drafted["steps"]] == drafted["ids"] == plain["ids"]
    for mine, theirs in zip(drafted["steps"], plain["steps"], strict=True):
        assert [a["id"] for a in mine["alternatives"]] == [a["id"] for a in theirs["alternatives"]]
        assert mine["probability"] == pytest.approx(theirs["probability"], abs=1e-4)


async def test_a_drafted_stream_numbers_its_tokens_in_order(client: httpx.AsyncClient) -> None:
    request = {"prompt": REPETITIVE, "max_new_tokens": 24, "ignore_eos": True, "stream": True}
    indices, done = [], None
    async with client.stream("POST", "/generate", json=request) as response:
        event = None
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                if event == "token":
                    indices.append(data["index"])
                elif event == "done":
                    done = data
    assert indices == list(range(24))
    assert done is not None and len(done["ids"]) == 24
