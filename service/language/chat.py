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
"""

from __future__ import annotations

import re
from typing import Protocol

_PLACEHOLDER = "\ue000genai-content-{}\ue001"  # private-use code points: no template or tokenizer gives them meaning
_PLACEHOLDER_PATTERN = re.compile("\ue000genai-content-(\\d+)\ue001")


class ChatTokenizer(Protocol):
    """What this module needs of a loaded model (service.language.model.LanguageModel has it)."""

    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str: ...

    def encode(self, text: str, add_special_tokens: bool = False, parse_special: bool = True) -> list[int]: ...

    @property
    def special_token_texts(self) -> frozenset[str]: ...


class ChatContentError(ValueError):
    """A message's content cannot be encoded safely; `index` is the message's position."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


def _split_template(lm: ChatTokenizer, messages: list[dict[str, str]], rendered: str) -> list[tuple[str, bool]] | None:
    """The rendered chat as (piece, is_content) pairs, or None where the template does not just place each
    content once, unchanged and in order."""
    skeleton = lm.render_chat([{**m, "content": _PLACEHOLDER.format(i)} for i, m in enumerate(messages)])
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


def encode_chat(lm: ChatTokenizer, messages: list[dict[str, str]]) -> tuple[str, list[int]]:
    """The rendered prompt and its ids: the template's control tokens as tokens, message contents as text."""
    rendered = lm.render_chat(messages)
    pieces = _split_template(lm, messages, rendered)
    if pieces is None:
        for index, message in enumerate(messages):
            found = sorted(t for t in lm.special_token_texts if t and t in message["content"])
            if found:
                raise ChatContentError(
                    f"contains the special-token text {found[0]!r}, which this model's chat template would not keep "
                    "apart from its own control tokens",
                    index,
                )
        return rendered, lm.encode(rendered, parse_special=True)
    ids: list[int] = []
    for piece, is_content in pieces:
        if piece:
            ids.extend(lm.encode(piece, parse_special=not is_content))
    return rendered, ids
