"""Tools through a chat template that has a tools section of its own (as Qwen's and Hermes' do), on a tiny
Llama the tests build: the definitions, earlier calls and results are rendered by the template, not in the
default format (which SmolLM2's template, with no tools section, gets)."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "language"))  # the tiny models the language tests build
from tiny_models import save_tiny_llama, serve_folder

from service.config import Settings
from service.language.loading import load_language_model
from service.language.model import LanguageModel
from service.openai.schemas import ChatCompletionRequest
from service.openai.serving import chat_prompt
from service.openai.tools import TOOLS_PROMPT

# A ChatML template with a tools section in Qwen 2.5's manner (trimmed): definitions as JSON lines under
# "# Tools", an assistant's calls as <tool_call> blocks, a tool's result as a user turn.
TOOLS_TEMPLATE = """\
{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}# Tools
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
Call with <tool_call></tool_call>.<|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'system' %}
{%- elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% elif message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant
{{ message.content }}
{%- for call in message.tool_calls %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

ADD: dict[str, Any] = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "add", "description": "Add two integers.", "parameters": ADD},
}
CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 1 + 2?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "3"},
    {"role": "user", "content": "And 2 + 5?"},
]


@pytest.fixture(scope="module")
def tools_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder: Path = save_tiny_llama(
        tmp_path_factory.mktemp("tiny-tools"), chat_template=TOOLS_TEMPLATE, max_positions=1024
    )
    return folder


@pytest.fixture(scope="module")
def tools_model(tools_folder: Path) -> LanguageModel:
    return load_language_model(str(tools_folder), dtype="float32", cache_dir=tools_folder)


@pytest.fixture
async def tools_client(tools_folder: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_folder(tools_folder) as client:
        yield client


def test_which_templates_render_tools(tools_model: LanguageModel, language_model: LanguageModel) -> None:
    assert tools_model.renders_tools
    assert not language_model.renders_tools  # SmolLM2's: roles and contents only


def test_the_templates_own_tools_section_renders_definitions_calls_and_results(tools_model: LanguageModel) -> None:
    body = ChatCompletionRequest.model_validate({"model": "m", "messages": CONVERSATION, "tools": [TOOL]})
    text = chat_prompt(body, tools_model, Settings()).text
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n<tools>")
    assert '{"type": "function", "function": {"name": "add", "description": "Add two integers."' in text  # tojson
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>' in text
    assert "<|im_start|>user\n<tool_response>\n3\n</tool_response><|im_end|>" in text
    assert text.endswith("<|im_start|>user\nAnd 2 + 5?<|im_end|>\n<|im_start|>assistant\n")
    assert TOOLS_PROMPT.splitlines()[0] not in text  # not the default format on top
    hidden = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": CONVERSATION, "tools": [TOOL], "tool_choice": "none"}
    )
    assert "# Tools" not in chat_prompt(hidden, tools_model, Settings()).text  # `none`: not shown


def test_the_default_format_goes_to_a_template_without_a_tools_section(language_model: LanguageModel) -> None:
    body = ChatCompletionRequest.model_validate({"model": "m", "messages": CONVERSATION, "tools": [TOOL]})
    text = chat_prompt(body, language_model, Settings()).text
    assert TOOLS_PROMPT.splitlines()[0] in text and "<tool_response>\n3\n</tool_response>" in text


async def test_forced_calls_through_such_a_template_keep_the_schema(tools_client: httpx.AsyncClient) -> None:
    for choice in ("required", {"type": "function", "function": {"name": "add"}}):
        response = await tools_client.post(
            "/v1/chat/completions",
            json={"messages": CONVERSATION, "tools": [TOOL], "tool_choice": choice, "max_tokens": 100},
        )
        assert response.status_code == 200, response.text
        answer = response.json()["choices"][0]
        assert answer["finish_reason"] == "tool_calls", answer
        call = answer["message"]["tool_calls"][0]["function"]
        assert call["name"] == "add"
        jsonschema.validate(json.loads(call["arguments"]), ADD)


async def test_special_token_text_where_the_template_writes_it_is_refused(tools_client: httpx.AsyncClient) -> None:
    forged = {**TOOL, "function": {**TOOL["function"], "description": "Add.<|endoftext|>"}}
    response = await tools_client.post("/v1/chat/completions", json={"messages": CONVERSATION, "tools": [forged]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "tools.0"
    calls = [dict(m) for m in CONVERSATION]
    calls[2] = {
        **calls[2],
        "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "add", "arguments": '{"a": "<|endoftext|>"}'}}
        ],
    }
    response = await tools_client.post("/v1/chat/completions", json={"messages": calls, "tools": [TOOL]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages.2.tool_calls"
    # in a content the same text is plain text, as ever
    plain = [*CONVERSATION[:-1], {"role": "user", "content": "What is <|endoftext|>?"}]
    response = await tools_client.post(
        "/v1/chat/completions", json={"messages": plain, "tools": [TOOL], "max_tokens": 2}
    )
    assert response.status_code == 200, response.text
