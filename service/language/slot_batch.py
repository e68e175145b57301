"""The running batch over a `LlamaDecoder`: one preallocated KV cache, a slot (row) per running sequence.

Why its own module: the decoder computes a pass; this object owns the cache's memory (how it grows,
moves rows and shrinks) and the engine's `RunningBatch` protocol over it.
"""

from __future__ import annotations

import torch

from service.language.llama_decoder import LlamaDecoder

_INITIAL_CAPACITY = 256  # positions a fresh cache has room for
_BLOCK = 256  # it grows in multiples of this


class SlotBatch:
    """The running batch over a `LlamaDecoder`: row b of one preallocated cache is running sequence b.

    Rows stay packed at the front: `keep` moves survivors down (a copy of their used span). The cache
    holds as many rows as are running (doubling up to the batch limit) and as many positions as the
    longest of them needs (growing by half, in blocks of 256); it shrinks back once the rows that needed
    more are gone, so one long request does not hold memory for the rows that came after it.
    Memory: rows × positions × layers × 2 × kv_heads × head_dim × 4 bytes (46 KB a position for SmolLM2)."""

    kind = "lean-llama"
    supports_drafts = True

    def __init__(self, decoder: LlamaDecoder, max_rows: int) -> None:
        self.decoder = decoder
        self.max_rows = max_rows
        self._cache: torch.Tensor | None = None
        self._lengths: list[int] = []
        self._pad_id = int(decoder.lm.tokenizer.pad_token_id if decoder.lm.tokenizer.pad_token_id is not None else 0)

    @property
    def allocated(self) -> tuple[int, int]:
        """(rows, positions) the cache has room for."""
        return (0, 0) if self._cache is None else (self._cache.shape[2], self._cache.shape[4])

    def _capacity_for(self, needed: int, current: int = 0) -> int:
        capacity = max(needed, current + current // 2, _INITIAL_CAPACITY)
        capacity = -(-capacity // _BLOCK) * _BLOCK
        return max(needed, min(capacity, self.decoder.lm.context_length))

    def _reallocate(self, rows: int, capacity: int) -> torch.Tensor:
        cache = self.decoder.new_cache(rows, capacity)
        if self._cache is not None and self._lengths:
            running, used = len(self._lengths), min(max(self._lengths), capacity)
            cache[:, :, :running, :, :used] = self._cache[:, :, :running, :, :used]
        self._cache = cache
        return cache

    def _ensure(self, rows: int, needed: int) -> torch.Tensor:
        """A cache with at least `rows` rows and `needed` positions, keeping what the current one holds."""
        have_rows, have_capacity = self.allocated
        if self._cache is not None and have_rows >= rows and have_capacity >= needed:
            return self._cache
        assert rows <= self.max_rows, "the engine admits no more rows than the batch limit"
        new_rows = have_rows if have_rows >= rows else min(self.max_rows, max(rows, 2 * have_rows))
        new_capacity = have_capacity if have_capacity >= needed else self._capacity_for(needed, have_capacity)
        return self._reallocate(new_rows, new_capacity)

    def _right_padded(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        positions = torch.arange(width, dtype=torch.long).expand(len(prompts), width)
        last = torch.tensor([len(p) - 1 for p in prompts], dtype=torch.long)
        device = self.decoder.device
        return ids.to(device), positions.to(device), last.to(device)

    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        start = len(self._lengths)
        ids, positions, last = self._right_padded(prompts)
        cache = self._ensure(start + len(prompts), ids.shape[1])
        logits = self.decoder.forward(ids, positions, cache[:, :, start : start + len(prompts)], last)
        self._lengths.extend(len(p) for p in prompts)
        return logits

    def decode(self, tokens: list[int]) -> torch.Tensor:
        n = len(self._lengths)
        assert len(tokens) == n and n > 0
        device = self.decoder.device
        cache = self._ensure(n, max(self._lengths) + 1)
        ids = torch.tensor(tokens, dtype=torch.long, device=device)[:, None]
        positions = torch.tensor(self._lengths, dtype=torch.long, device=device)[:, None]
        last = torch.zeros(n, dtype=torch.long, device=device)
        logits = self.decoder.forward(ids, positions, cache[:, :, :n], last)
        self._lengths = [length + 1 for length in self._lengths]
        return logits

    def decode_drafts(self, inputs: list[list[int]]) -> torch.Tensor:
        n = len(self._lengths)
        assert len(inputs) == n and n > 0
        width = max(len(fed) for fed in inputs)
        device = self.decoder.device
        cache = self._ensure(n, max(self._lengths) + width)
        ids = torch.full((n, width), self._pad_id, dtype=torch.long)
        for row, fed in enumerate(inputs):
            ids[row, : len(fed)] = torch.tensor(fed, dtype=torch.long)
        # Padding sits past a row's drafts: what it writes there lies beyond the row's length after `accept`,
        # and is overwritten before any later query can see it.
        positions = (
            torch.tensor(self._lengths, dtype=torch.long)[:, None] + torch.arange(width, dtype=torch.long)[None, :]
        )
        return self.decoder.forward(ids.to(device), positions.to(device), cache[:, :, :n], None)

    def accept(self, kept: list[int]) -> None:
        self._lengths = [length + count for length, count in zip(self._lengths, kept, strict=True)]

    def keep(self, rows: list[int]) -> None:
        if rows == list(range(len(self._lengths))):
            return
        if not rows:
            self.clear()
            return
        assert self._cache is not None
        lengths = [self._lengths[row] for row in rows]
        moved = [(to, row) for to, row in enumerate(rows) if to != row]
        if moved:
            used = max(lengths)
            sources = torch.tensor([row for _, row in moved], device=self._cache.device)
            targets = torch.tensor([to for to, _ in moved], device=self._cache.device)
            # Rows only move down (rows ascend), and the sources are copied out before any target is written.
            self._cache[:, :, targets, :, :used] = self._cache[:, :, sources, :, :used]
        self._lengths = lengths
        self._shrink_if_oversized()

    def _shrink_if_oversized(self) -> None:
        """Give back the positions that retired sequences needed and the running ones do not."""
        rows, capacity = self.allocated
        longest = max(self._lengths, default=0)
        if capacity > _INITIAL_CAPACITY and longest * 4 < capacity:
            self._reallocate(rows, self._capacity_for(longest + 1))

    def clear(self) -> None:
        # Keep the allocation while it is of the usual size; drop one grown by a long sequence.
        if self.allocated[1] > _INITIAL_CAPACITY:
            self._cache = None
        self._lengths = []

    def last_logits(self, prompts: list[list[int]]) -> torch.Tensor:
        ids, positions, last = self._right_padded(prompts)
        cache = self.decoder.new_cache(len(prompts), ids.shape[1])
        return self.decoder.forward(ids, positions, cache, last)

    def prompt_logits(self, ids: list[int]) -> torch.Tensor:
        tokens, positions, _ = self._right_padded([ids])
        return self.decoder.forward(tokens, positions, self.decoder.new_cache(1, len(ids)), None)[0]
