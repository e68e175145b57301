"""Chat messages to token ids, with the model's chat template, such that no message can forge a turn.

The template places control tokens (`<|im_start|>`, `<|im_end|>`) around each message. Encoding the
rendered text as one string would also turn a message's own `<|im_end|>` into the real control token,
so any caller could close its turn and open a `system` or `assistant` one. Here the template's text
is encoded with special tokens and each message's content as plain text, as OpenAI does.

How: render once with the real contents and once with a placeholder for each content. The placeholder
rendering splits the text into template pieces; the real rendering must equal those pieces with the
contents between them (a template that rewrites contents, trimming them say, fails that check). Then
each piece is encoded on its own. Where the check fails, the whole text is encoded as before, unless a
content holds special-token text: that is refused, since it could not be kept apart from the template's.

Continuing the final message (`continue_final_message`, vLLM's and transformers' name, for prefill): the
chat is rendered without the generation prompt and cut right after the last message's content, so the
template's end of that turn (`<|im_end|>` and what follows) is left out and the model goes on writing it.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

_PLACEHOLDER = "\ue000genai-content-{}\ue001"  # private-use code points: no template or tokenizer gives them meaning
_PLACEHOLDER_PATTERN = re.compile("\ue000genai-content-(\\d+)\ue001")


class ChatTokenizer(Protocol):
    """What this module needs of a loaded model (service.language.model.LanguageModel has it)."""

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str: ...

    def encode(self, text: str, add_special_tokens: bool = False, parse_special: bool = True) -> list[int]: ...

    @property
    def special_token_texts(self) -> frozenset[str]: ...


class ChatContentError(ValueError):
    """A message's content cannot be encoded safely; `index` is the message's position."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


class ContinuationError(ValueError):
    """The final message cannot be continued (a generation prompt asked too, or a template that hides it)."""


def _split_template(
    lm: ChatTokenizer,
    messages: list[dict[str, Any]],
    rendered: str,
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
) -> list[tuple[str, bool]] | None:
    """The rendered chat as (piece, is_content) pairs, or None where the template does not just place each
    content once, unchanged and in order."""
    skeleton = lm.render_chat(
        [{**m, "content": _PLACEHOLDER.format(i)} for i, m in enumerate(messages)],
        add_generation_prompt=add_generation_prompt,
        tools=tools,
    )
    pieces: list[tuple[str, bool]] = []
    cursor = 0
    expected = 0
    for match in _PLACEHOLDER_PATTERN.finditer(skeleton):
        if int(match.group(1)) != expected:
            return None
        pieces.append((skeleton[cursor : match.start()], False))
        pieces.append((messages[expected]["content"], True))
        cursor = match.end()
        expected += 1
    pieces.append((skeleton[cursor:], False))
    if expected != len(messages) or "".join(piece for piece, _ in pieces) != rendered:
        return None
    return pieces


def _cut_after_final_content(rendered: str, content: str) -> str:
    """The rendered chat up to the end of the final message's content (transformers' way for templates that
    do not place contents verbatim: the last occurrence of the stripped content)."""
    stripped = content.strip()
    at = rendered.rfind(stripped) if stripped else -1
    if at < 0:
        raise ContinuationError(
            "this model's chat template does not show the final message's content, so it cannot be continued"
        )
    return rendered[: at + len(stripped)]


def encode_chat(
    lm: ChatTokenizer,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    tools: list[dict[str, Any]] | None = None,
) -> tuple[str, list[int]]:
    """The rendered prompt and its ids: the template's control tokens as tokens, message contents as text.

    `add_generation_prompt` ends it with the opening of an assistant turn; `continue_final_message` (never
    with it) ends it right after the last message's content instead, for the model to continue. `tools`
    (OpenAI-shaped definitions) go to a template that renders them itself: what it writes of them, and of
    the messages' `tool_calls`, is outside the contents, so the caller makes sure it holds no special-token
    text."""
    if continue_final_message and add_generation_prompt:
        raise ContinuationError("a final message cannot be continued after a generation prompt")
    rendered = lm.render_chat(messages, add_generation_prompt=add_generation_prompt, tools=tools)
    pieces = _split_template(lm, messages, rendered, add_generation_prompt, tools)
    if pieces is not None and continue_final_message:
        pieces = pieces[:-1]  # the template's text after the last content: that turn's end
        rendered = "".join(piece for piece, _ in pieces)
    if pieces is None:
        for index, message in enumerate(messages):
            found = sorted(t for t in lm.special_token_texts if t and t in message["content"])
            if found:
                raise ChatContentError(
                    f"contains the special-token text {found[0]!r}, which this model's chat template would not keep "
                    "apart from its own control tokens",
                    index,
                )
        if continue_final_message:
            rendered = _cut_after_final_content(rendered, messages[-1]["content"])
        return rendered, lm.encode(rendered, parse_special=True)
    ids: list[int] = []
    for piece, is_content in pieces:
        if piece:
            ids.extend(lm.encode(piece, parse_special=not is_content))
    return rendered, ids
