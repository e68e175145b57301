"""The tree's forward passes: a prompt run once, then continued by many paths of one length (one level
of the tree) in batched passes that reuse the prompt's keys and values, by the forward the engine
serves the model with (as forward.py chooses it). On the engine thread; float32 logits cut to the
tokenizer's vocabulary."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch

from service.inspect.forward import LeanInspector, ModelInspector, TransformersInspector

# Most cached positions (rows × their length) one pass of the tree holds: 4096 is the lean decoder's
# usual cache for a full batch (188 MB for SmolLM2), so a tree needs no more memory than serving does.
TREE_CHUNK_POSITIONS = 4096


class Continuations(Protocol):
    """A prompt run once, continued by many paths of one length."""

    @property
    def root(self) -> torch.Tensor:
        """Logits [vocab] after the prompt."""
        ...

    def after(self, paths: Sequence[Sequence[int]]) -> torch.Tensor:
        """Logits [len(paths), vocab] after the prompt followed by each path (all of one length), batched."""
        ...


def continuations(inspector: ModelInspector, ids: list[int]) -> Continuations:
    """Run the prompt `ids` once, by the inspector's forward."""
    if isinstance(inspector, LeanInspector):
        return LeanContinuations(inspector, ids)
    if isinstance(inspector, TransformersInspector):
        return TransformersContinuations(inspector, ids)
    raise TypeError(f"no continuations for {type(inspector).__name__}")


def chunked(paths: Sequence[Sequence[int]], prompt_tokens: int) -> Iterator[Sequence[Sequence[int]]]:
    """`paths` (all of one length) in chunks of at most TREE_CHUNK_POSITIONS cached positions (one row at least)."""
    rows = max(1, TREE_CHUNK_POSITIONS // (prompt_tokens + len(paths[0])))
    for start in range(0, len(paths), rows):
        yield paths[start : start + rows]


class LeanContinuations:
    """The prompt's keys and values computed once; each chunk of paths gets a cache whose rows start with
    a copy of them and runs only the paths' tokens, by the decoder's own `forward`."""

    def __init__(self, inspector: LeanInspector, ids: list[int]) -> None:
        decoder = inspector.decoder
        self.decoder, self.vocab, self.length = decoder, inspector.vocab, len(ids)
        self.prompt_cache = decoder.new_cache(1, len(ids))  # [layers, 2, 1, kv_heads, S, head_dim]
        tokens = inspector.ids_tensor(ids)[None]
        positions = torch.arange(len(ids), device=decoder.device)[None]
        last = torch.tensor([len(ids) - 1], device=decoder.device)
        self._root = decoder.forward(tokens, positions, self.prompt_cache, last)[0, : self.vocab]

    @property
    def root(self) -> torch.Tensor:
        return self._root

    def after(self, paths: Sequence[Sequence[int]]) -> torch.Tensor:
        return torch.cat([self._chunk(chunk) for chunk in chunked(paths, self.length)])

    def _chunk(self, paths: Sequence[Sequence[int]]) -> torch.Tensor:
        rows, width, device = len(paths), len(paths[0]), self.decoder.device
        cache = self.decoder.new_cache(rows, self.length + width)  # [layers, 2, rows, kv_heads, S + width, head_dim]
        cache[:, :, :, :, : self.length] = self.prompt_cache  # the prompt's keys and values in every row
        tokens = torch.tensor([list(p) for p in paths], dtype=torch.long, device=device)  # [rows, width]
        positions = (self.length + torch.arange(width, device=device))[None].expand(rows, width)
        last = torch.full((rows,), width - 1, dtype=torch.long, device=device)
        return self.decoder.forward(tokens, positions, cache, last)[:, : self.vocab]


class TransformersContinuations:
    """The prompt's `DynamicCache` computed once; each chunk of paths gets a cache of its rows made from it."""

    def __init__(self, inspector: TransformersInspector, ids: list[int]) -> None:
        from transformers import DynamicCache

        self.inspector, self.length = inspector, len(ids)
        self.prompt_cache: Any = DynamicCache(config=inspector.model.config)
        out = inspector.model(
            input_ids=inspector.ids_tensor(ids), use_cache=True, **{inspector.cache_kwarg: self.prompt_cache}
        )
        self._root: torch.Tensor = out.logits[0, -1, : inspector.vocab].float()

    @property
    def root(self) -> torch.Tensor:
        return self._root

    def after(self, paths: Sequence[Sequence[int]]) -> torch.Tensor:
        return torch.cat([self._chunk(chunk) for chunk in chunked(paths, self.length)])

    def _chunk(self, paths: Sequence[Sequence[int]]) -> torch.Tensor:
        from transformers import DynamicCache

        inspector = self.inspector
        rows, width, device = len(paths), len(paths[0]), inspector.lm.device
        layers = [  # each [1, kv_heads, S, head_dim], repeated for every row
            (layer.keys.expand(rows, -1, -1, -1).contiguous(), layer.values.expand(rows, -1, -1, -1).contiguous())
            for layer in self.prompt_cache.layers
        ]
        cache = DynamicCache(ddp_cache_data=layers)
        tokens = torch.tensor([list(p) for p in paths], dtype=torch.long, device=device)  # [rows, width]
        out = inspector.model(
            input_ids=tokens,
            attention_mask=torch.ones((rows, self.length + width), dtype=torch.long, device=device),
            position_ids=(self.length + torch.arange(width, device=device))[None].expand(rows, width),
            use_cache=True,
            **{inspector.cache_kwarg: cache},
        )
        logits: torch.Tensor = out.logits[:, -1, : inspector.vocab].float()
        return logits
