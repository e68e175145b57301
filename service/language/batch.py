"""The running batch: the KV caches of every sequence being generated, and the forward passes over them.

The engine decides which sequences run; a `RunningBatch` owns their caches and computes logits. Rows
stay in the engine's order: `prefill` appends rows, `keep` drops rows, `decode` advances them all.

Two implementations:
  - `DynamicCacheBatch` runs any transformers causal LM through its own `forward`, merging the
    per-prompt caches into one left-padded `DynamicCache`;
  - `SlotBatch` (`slot_batch.py`) runs Llama-family models through a lean forward pass over
    prepacked weights and a preallocated cache, several times cheaper per step on CPU.
The engine takes any other implementation too (`GenerationEngine(..., batch=...)`): its unit tests
pass one with scripted logits (tests/language/test_engine_unit.py).
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol

import torch

from service.language.model import LanguageModel


class RunningBatch(Protocol):
    """The forward passes over the running rows' KV caches; every logits tensor is float32 and may be wider
    than the tokenizer's vocabulary (the engine cuts it to `vocab_size`)."""

    @property
    def kind(self) -> str:
        """A short name for `/info`."""
        ...

    @property
    def supports_drafts(self) -> bool:
        """Whether `decode_drafts` / `accept` work (prompt lookup)."""
        ...

    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        """Append one row per prompt (their prompts run together); float32 logits [len(prompts), vocab] of each last position."""
        ...

    def decode(self, tokens: list[int]) -> torch.Tensor:
        """Feed one token to every row; float32 logits [rows, vocab] for the next."""
        ...

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows (ascending), dropping the others' caches."""
        ...

    def clear(self) -> None: ...

    def last_logits(self, prompts: list[list[int]]) -> torch.Tensor:
        """Float32 logits [len(prompts), vocab] after each prompt, without touching the running rows."""
        ...

    def prompt_logits(self, ids: list[int]) -> torch.Tensor:
        """Float32 logits [len(ids), vocab] after every position of one prompt, without touching the running rows."""
        ...

    def decode_drafts(self, inputs: list[list[int]]) -> torch.Tensor:
        """Feed each row its last token and then draft tokens (counts may differ); float32 logits
        [rows, longest, vocab] at every fed position. Rows do not advance until `accept`."""
        ...

    def accept(self, kept: list[int]) -> None:
        """Advance each row by the number of fed tokens it keeps (the first one and the drafts confirmed)."""
        ...


def make_running_batch(lm: LanguageModel, max_rows: int, lean: bool = True) -> RunningBatch:
    """The lean decoder when it supports the model (and `lean`), else transformers' own forward."""
    if lean:
        from service.language.llama_decoder import LlamaDecoder
        from service.language.slot_batch import SlotBatch

        if LlamaDecoder.unsupported_reason(lm) is None:
            return SlotBatch(LlamaDecoder.shared(lm), max_rows)
    return DynamicCacheBatch(lm)


class DynamicCacheBatch:
    """Any causal LM, through transformers' forward and one left-padded `DynamicCache` for the batch.

    Per-row positions and the attention mask make a padded row compute what it would compute alone."""

    kind = "transformers"
    supports_drafts = False

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        self.model = lm.module()  # with its weights (loaded again if the lean decoder holds the only copy)
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self._lengths: list[int] = []
        self._pad_id = int(lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0)
        forward_params = inspect.signature(self.model.forward).parameters
        self._supports_logits_to_keep = "logits_to_keep" in forward_params
        # transformers renamed `past_key_values` to `cache` (5.2x); the cache object is updated in place either way.
        self._cache_kwarg = "cache" if "cache" in forward_params else "past_key_values"

    def _left_padded(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        device = self.lm.device
        return ids.to(device), mask.to(device), positions.to(device)

    def _forward(self, kv_cache: Any = None, **kwargs: Any) -> Any:
        if kv_cache is not None:
            kwargs[self._cache_kwarg] = kv_cache
        if self._supports_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        return self.model(**kwargs)

    def last_logits(self, prompts: list[list[int]]) -> torch.Tensor:
        ids, mask, positions = self._left_padded(prompts)
        out = self._forward(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
        return _last_position(out)

    def prompt_logits(self, ids: list[int]) -> torch.Tensor:
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.lm.device)
        logits: torch.Tensor = self.model(input_ids=input_ids, use_cache=False).logits
        return logits[0].float()

    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        from transformers import DynamicCache

        ids, mask, positions = self._left_padded(prompts)
        cache = DynamicCache(config=self.model.config)
        out = self._forward(input_ids=ids, attention_mask=mask, position_ids=positions, kv_cache=cache, use_cache=True)
        # Zero the padded slots so nothing but masked zeros ever sits in the cache.
        keep = mask[:, None, :, None].to(self.lm.dtype)
        self._merge([(_keys(layer) * keep, _values(layer) * keep) for layer in cache.layers], mask)
        self._lengths.extend(len(p) for p in prompts)
        return _last_position(out)

    def _merge(self, layers: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor) -> None:
        from transformers import DynamicCache

        if self._cache is None or self._mask is None:
            self._cache = DynamicCache(ddp_cache_data=layers)
            self._mask = mask
            return
        old_len, new_len = self._mask.shape[1], mask.shape[1]
        width = max(old_len, new_len)

        def pad_left(t: torch.Tensor, length: int) -> torch.Tensor:
            if length == width:
                return t
            pad_shape = list(t.shape)
            pad_shape[-2 if t.dim() == 4 else -1] = width - length
            return torch.cat([t.new_zeros(pad_shape), t], dim=-2 if t.dim() == 4 else -1)

        merged = []
        for (ok, ov), (nk, nv) in zip(
            ((layer.keys, layer.values) for layer in self._cache.layers), layers, strict=True
        ):
            merged.append(
                (
                    torch.cat([pad_left(ok, old_len), pad_left(nk, new_len)]),
                    torch.cat([pad_left(ov, old_len), pad_left(nv, new_len)]),
                )
            )
        self._cache = DynamicCache(ddp_cache_data=merged)
        self._mask = torch.cat([pad_left(self._mask, old_len), pad_left(mask, new_len)])

    def decode(self, tokens: list[int]) -> torch.Tensor:
        assert self._mask is not None
        device = self.lm.device
        input_ids = torch.tensor([[t] for t in tokens], dtype=torch.long, device=device)
        # The token fed now sits right after everything already in the row's cache.
        positions = torch.tensor([[n] for n in self._lengths], dtype=torch.long, device=device)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(tokens), 1))], dim=1)
        out = self._forward(
            input_ids=input_ids, attention_mask=self._mask, position_ids=positions, kv_cache=self._cache, use_cache=True
        )
        self._lengths = [n + 1 for n in self._lengths]
        return _last_position(out)

    def keep(self, rows: list[int]) -> None:
        if len(rows) == len(self._lengths):
            return
        if not rows:
            self.clear()
            return
        assert self._mask is not None
        index = torch.tensor(rows, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        # Drop columns that are padding for every remaining row, so the cache does not keep growing.
        used = mask.sum(dim=0).nonzero()
        first = int(used[0]) if used.numel() else 0
        layers = [
            (layer.keys.index_select(0, index)[:, :, first:, :], layer.values.index_select(0, index)[:, :, first:, :])
            for layer in self._cache.layers
        ]
        self._cache = type(self._cache)(ddp_cache_data=layers)
        self._mask = mask[:, first:]
        self._lengths = [self._lengths[row] for row in rows]

    def clear(self) -> None:
        self._cache, self._mask, self._lengths = None, None, []

    def decode_drafts(self, inputs: list[list[int]]) -> torch.Tensor:
        raise NotImplementedError("transformers' DynamicCache cannot take back rejected draft tokens")

    def accept(self, kept: list[int]) -> None:
        raise NotImplementedError("transformers' DynamicCache cannot take back rejected draft tokens")


def _last_position(out: Any) -> torch.Tensor:
    """Float32 logits at each row's last position from a transformers forward's output: [rows, vocab]."""
    logits: torch.Tensor = out.logits
    return logits[:, -1, :].float()


def _keys(layer: Any) -> torch.Tensor:
    """A `DynamicCache` layer's keys: [rows, kv_heads, length, head_dim] (transformers types layers as a
    union that includes kinds without keys; a causal LM's dynamic cache has only full-attention layers)."""
    keys: torch.Tensor = layer.keys
    return keys


def _values(layer: Any) -> torch.Tensor:
    values: torch.Tensor = layer.values
    return values
