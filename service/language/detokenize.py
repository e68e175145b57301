"""Turning generated token ids into text increments for streaming.

A character can span several byte-level tokens, and a stop string can span several steps; a client
must never see half a character or the start of a stop string it should not have received. So each
step emits only the text that no later token can change.

Decoding is windowed (as TGI does): each step decodes only the last few tokens, with the token
before them as context for tokenizers whose pieces depend on their neighbours, instead of the whole
output again.
"""

from __future__ import annotations

from typing import Any


class TextAssembler:
    """Builds one generation's text token by token; `push` returns what may be sent to the client now."""

    def __init__(self, tokenizer: Any, skip_ids: frozenset[int], stop: tuple[str, ...] = ()) -> None:
        self._tokenizer = tokenizer
        self._skip_ids = skip_ids
        self._stop = stop
        self._hold = max((len(s) for s in stop), default=1) - 1
        self._ids: list[int] = []
        self._prefix_offset = 0  # start of the context window
        self._read_offset = 0  # tokens before this are already in `_decoded`
        self._decoded = ""  # complete characters decoded so far
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))

    def _advance(self) -> None:
        """Move newly complete characters from the pending tokens into `_decoded`."""
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        window = self._decode(self._ids[self._prefix_offset :])
        if len(window) > len(prefix) and not window.endswith("\ufffd"):
            self._decoded += window[len(prefix) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)

    def _pending_text(self) -> str:
        """Text of tokens not yet complete (possibly a broken character), for the end of a generation."""
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        return self._decode(self._ids[self._prefix_offset :])[len(prefix) :]

    def push(self, token_id: int) -> str:
        """Add a token; return the newly safe text. Sets `stopped` when a stop string appeared (text cut before it)."""
        if token_id not in self._skip_ids:
            self._ids.append(token_id)
            self._advance()
        previous = self.text
        text = self._decoded
        if self._stop:
            window = max(0, len(previous) - self._hold - 1)
            hits = [i for i in (text.find(s, window) for s in self._stop) if i >= 0]
            if hits:
                self.text = text[: min(hits)]
                self.stopped = True
                return self.flush()
        self.text = text
        safe = max(self.emitted, len(text) - self._hold)
        increment = text[self.emitted : safe]
        self.emitted = safe
        return increment

    def flush(self) -> str:
        """The generation ended: everything not yet sent (a trailing broken character included)."""
        if not self.stopped:
            self.text = self._decoded + self._pending_text()
        increment = self.text[self.emitted :]
        self.emitted = len(self.text)
        return increment
