"""A generation that fails mid-stream ends the stream with an OpenAI error event and `[DONE]`; its handles are cancelled."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

from service.language.events import ErrorEvent, GenerationHandle, TokenEvent
from service.openai.schemas import ChatCompletionRequest
from service.openai.serving import ChoiceSpec, Prompt, merged_events
from service.openai.streams import chat_chunks

if TYPE_CHECKING:
    from service.language.model import LanguageModel


class FakeHandle:
    def __init__(self, events: list[Any]) -> None:
        self._events = events
        self.cancelled = False

    async def events(self) -> AsyncIterator[Any]:
        for event in self._events:
            yield event

    def cancel(self) -> None:
        self.cancelled = True


async def test_error_mid_stream(language_model: LanguageModel) -> None:
    token = TokenEvent(index=0, id=504, token="The", text="The", probability=0.5, logprob=-0.69, special=False)
    handle = FakeHandle([token, ErrorEvent("the model failed")])
    body = ChatCompletionRequest(messages=[{"role": "user", "content": "Hi"}], stream=True)  # type: ignore[list-item]
    prompt = Prompt(ids=[1, 2, 3], text="Hi")
    # the fake stands in for a real handle: the streaming code only calls events() and cancel()
    handles = cast(dict[int, GenerationHandle], {0: handle})
    events = merged_events(handles)
    chunks = [
        c async for c in chat_chunks(body, [ChoiceSpec(0, prompt, None)], handles, events, "m", prompt, language_model)
    ]
    assert chunks[-1] == "[DONE]"
    payloads = [json.loads(c) for c in chunks[:-1]]
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert payloads[1]["choices"][0]["delta"] == {"content": "The"}
    assert payloads[-1] == {
        "error": {"message": "the model failed", "type": "server_error", "param": None, "code": 500}
    }
    assert handle.cancelled
