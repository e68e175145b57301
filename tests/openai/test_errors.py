"""Invalid or unsupported requests under /v1 get 400 (404 for an unknown model) in OpenAI's error shape."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

PROMPT = "Hello"


def _assert_openai_error(response: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"prompt": PROMPT, "max_tokens": 100000}, "max_tokens"),
        ("/v1/completions", {"prompt": PROMPT, "presence_penalty": 2.5}, "presence_penalty"),  # OpenAI's -2..2
        ("/v1/completions", {"prompt": PROMPT, "frequency_penalty": -3}, "frequency_penalty"),
        ("/v1/completions", {"prompt": PROMPT, "logit_bias": {"1": 101}}, "logit_bias.1"),  # -100..100
        ("/v1/completions", {"prompt": PROMPT, "logit_bias": {"999999": 5}}, "logit_bias"),  # outside the vocabulary
        ("/v1/completions", {"prompt": PROMPT, "best_of": 3}, "best_of"),
        ("/v1/completions", {"prompt": PROMPT, "suffix": "x"}, "suffix"),
        ("/v1/completions", {"prompt": PROMPT, "logprobs": 21}, "logprobs"),
        ("/v1/completions", {"prompt": PROMPT, "temperature": 100.5}, "temperature"),  # the native bound, shared
        ("/v1/completions", {"prompt": PROMPT, "max_tokens": 0}, None),
        ("/v1/completions", {"prompt": ""}, "prompt"),
        ("/v1/completions", {"prompt": [999999999]}, "prompt"),
        ("/v1/completions", {"prompt": PROMPT, "stop": ["a"] * 50}, "stop"),
        ("/v1/completions", {"prompt": PROMPT, "made_up": 1}, "made_up"),
        ("/v1/completions", {}, "prompt"),
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, None),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            None,
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
            "tools.0.function",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}},
            "response_format.type",
        ),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 25},
            "top_logprobs",
        ),
    ],
)
async def test_invalid_requests_get_400(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], param: str | None
) -> None:
    error = _assert_openai_error(await client.post(path, json=body), 400, param)
    assert error["type"] == "invalid_request_error"


async def test_malformed_json_gets_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/completions", content=b'{"prompt": ', headers={"content-type": "application/json"}
    )
    _assert_openai_error(response, 400, "body")


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    error = _assert_openai_error(
        await client.post("/v1/completions", json={"model": "gpt-4o", "prompt": PROMPT}), 404, "model"
    )
    assert "gpt-4o" in error["message"]


async def test_the_client_raises_typed_errors(aclient: openai.AsyncOpenAI, model_id: str) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        await aclient.completions.create(model=model_id, prompt=PROMPT, presence_penalty=3.0)
    assert "presence_penalty" in str(bad.value)
    with pytest.raises(openai.NotFoundError):
        await aclient.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    # the service is unharmed
    ok = await aclient.completions.create(model=model_id, prompt=PROMPT, max_tokens=1, temperature=0)
    assert ok.usage is not None and ok.usage.completion_tokens == 1


async def test_explicit_nulls_mean_defaults(client: httpx.AsyncClient) -> None:
    nulls = {
        "n": None,
        "stream": None,
        "logprobs": None,
        "top_logprobs": None,
        "stop": None,
        "seed": None,
        "user": None,
        "tools": None,
        "response_format": None,
        "temperature": 0,
        "max_tokens": 1,
    }
    chat = await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], **nulls})
    assert chat.status_code == 200, chat.text
    completion = await client.post(
        "/v1/completions", json={"prompt": "Hi", "echo": None, "suffix": None, "best_of": None, **nulls}
    )
    assert completion.status_code == 200, completion.text
    assert completion.json()["choices"][0]["logprobs"] is None


@pytest.mark.parametrize(
    ("path", "body", "field", "native"),
    [
        ("/v1/completions", {"prompt": PROMPT, "max_tokens": 100000}, "max_tokens", "max_new_tokens"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000},
            "max_tokens",
            "max_new_tokens",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 100000},
            "max_completion_tokens",
            "max_new_tokens",
        ),
        ("/v1/completions", {"prompt": PROMPT, "timeout_s": 100000}, "timeout_s", None),
    ],
)
async def test_a_limit_names_the_field_the_client_sent(
    client: httpx.AsyncClient, path: str, body: dict[str, object], field: str, native: str | None
) -> None:
    """The native limits, checked once for every protocol, say OpenAI's names under /v1 (param and message)."""
    error = _assert_openai_error(await client.post(path, json=body), 400, field)
    assert error["message"].startswith(f"{field} = 100000") and "exceeds the limit" in error["message"], error
    if native is not None:
        assert native not in error["message"], error


async def test_native_limits_keep_native_names(client: httpx.AsyncClient) -> None:
    response = await client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 100000})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "max_new_tokens" and error["message"].startswith("max_new_tokens = 100000 exceeds"), error
