"""Turning generated token ids into text increments for streaming.

A character can span several byte-level tokens, and a stop string can span several steps; a client
must never see half a character or the start of a stop string it should not have received. So each
step emits only the text that no later token can change.
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
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a token; return the newly safe text. Sets `stopped` when a stop string appeared (text cut before it)."""
        if token_id not in self._skip_ids:
            self._ids.append(token_id)
        previous = self.text
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if self._stop:
            window = max(0, len(previous) - self._hold - 1)
            hits = [i for i in (text.find(s, window) for s in self._stop) if i >= 0]
            if hits:
                self.text = text[: min(hits)]
                self.stopped = True
                return self.flush()
        self.text = text
        safe = len(text)
        while safe > self.emitted and text[safe - 1] == "\ufffd":  # an incomplete UTF-8 sequence so far
            safe -= 1
        safe = max(self.emitted, min(safe, len(text) - self._hold))
        increment = text[self.emitted : safe]
        self.emitted = safe
        return increment

    def flush(self) -> str:
        """The generation ended: everything not yet sent."""
        increment = self.text[self.emitted :]
        self.emitted = len(self.text)
        return increment
