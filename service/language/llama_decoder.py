"""A lean forward pass for Llama-family decoders (the running batch over it is `slot_batch.SlotBatch`).

Why: on a small CPU a decode step of a 135M model is a few dozen tiny matrix products, and transformers'
general forward spends as long again in Python and small kernels around them. This one:
  - packs every weight once for oneDNN (`mkldnn._linear_pointwise`), which reads bf16 and fp32 weights
    about twice as fast as a plain `matmul` at small batch on this CPU (bench/engine_steps.py);
  - fuses q/k/v and gate/up into one product each;
  - keeps one preallocated KV cache tensor with a slot (row) per running sequence, written in place,
    so a step never concatenates or re-pads caches;
  - computes attention with plain batched products (the flash kernel costs ~0.3 ms a call at one query).

With GENAI_WEIGHTS=gguf (a model that came from a GGUF file, on CPU) the products multiply with the file's
own 4-bit weights instead (lowbit.py): the same forward over other weights.

It computes what transformers' `LlamaForCausalLM` computes (same RMSNorm, RoPE and softmax precision);
tests hold its logits to transformers' within float32 rounding and its greedy output to `generate`'s.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from service.language import lowbit
from service.language.model import LanguageModel

log = logging.getLogger("service.language")
Product = Callable[[torch.Tensor], torch.Tensor]  # x [..., in] -> x Wᵀ [..., out]
# (layer, x, cos, sin, mask, layer_cache, rows, positions) -> x after that layer: `decoder_layer` compiled
CompiledLayers = Callable[
    [int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    torch.Tensor,
]


def _oneDNN_available() -> bool:
    return bool(
        torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


class Linear:
    """y = x Wᵀ, with W prepacked for oneDNN on CPU when that works (checked against F.linear once).

    Once packed, the plain weight is let go (for fused ones, a concatenated copy), so the decoder adds one
    copy of the model's linear weights to the memory, not two."""

    def __init__(self, weight: torch.Tensor, pack: bool) -> None:
        self.out_features = weight.shape[0]
        self.weight: torch.Tensor | None = weight.detach().contiguous()
        self._packed: torch.Tensor | None = None
        if pack:
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, 8)
                probe = torch.randn(3, self.weight.shape[1], dtype=self.weight.dtype)
                got = torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], "")
                want = F.linear(probe, self.weight)
                tolerance = 1e-3 if self.weight.dtype == torch.float32 else 5e-2
                if got.shape == want.shape and torch.allclose(
                    got.float(), want.float(), rtol=tolerance, atol=tolerance
                ):
                    self._packed, self.weight = packed, None
            except (RuntimeError, NotImplementedError):  # an old or unusual build: the plain product is correct too
                self._packed = None

    @property
    def packed(self) -> bool:
        return self._packed is not None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            assert self.weight is not None
            return F.linear(x, self.weight)
        shape = x.shape
        out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]), self._packed, None, "none", [], "")
        result: torch.Tensor = out.view(*shape[:-1], self.out_features)
        return result


class LlamaDecoder:
    """The weights of a Llama-family model, laid out for the lean forward pass. Read-only once built,
    so engines over the same loaded model (several apps in one process, as in the tests) share one."""

    _shared: ClassVar[weakref.WeakValueDictionary[int, LlamaDecoder]] = weakref.WeakValueDictionary()
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls, lm: LanguageModel) -> LlamaDecoder:
        """The decoder for `lm`, built once while any engine still uses it (keyed by the model object,
        which the decoder keeps alive)."""
        if isinstance(lm.weights_holder, LlamaDecoder):  # built at load, holding the only copy of the weights
            return lm.weights_holder
        with cls._shared_lock:
            decoder = cls._shared.get(id(lm))
            if decoder is None or decoder.lm is not lm:
                decoder = cls._shared[id(lm)] = cls(lm)
            return decoder

    @staticmethod
    def unsupported_reason(lm: LanguageModel) -> str | None:
        """None when `forward` computes exactly what the model's own forward does; else why not."""
        cfg = lm.config
        if getattr(cfg, "model_type", None) != "llama":
            return f"model type {getattr(cfg, 'model_type', None)!r} (only llama)"
        if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
            return "biases in attention or MLP"
        if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "pretraining_tp", 1) != 1:
            return "activation or tensor-parallel layout"
        rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
        if (rope.get("rope_type") or rope.get("type") or "default") != "default":
            return f"rope type {rope.get('rope_type') or rope.get('type')!r}"
        if getattr(cfg, "_attn_implementation", "sdpa") not in ("sdpa", "eager", None):
            return "attention implementation"
        if lm.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return f"dtype {lm.dtype}"
        return None

    def __init__(self, lm: LanguageModel) -> None:
        cfg = lm.config
        self.lm = lm
        self.device = lm.device
        self.dtype = lm.dtype
        self.layers = int(cfg.num_hidden_layers)
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(cfg.num_key_value_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.eps = float(cfg.rms_norm_eps)
        self.scale = self.head_dim**-0.5
        # Keys, values and attention in float32 on CPU even for bf16 weights: CPU batched products are twice
        # as fast in float32 at these sizes, and attention is then as exact as float32 weights allow.
        self.cache_dtype = torch.float32 if self.device.type == "cpu" else self.dtype
        pack = self.device.type == "cpu" and _oneDNN_available()
        self.intermediate = int(cfg.intermediate_size)
        self.weights = "dense"  # or "gguf": the file's own low-bit weights (lowbit.py)
        self.qkv: list[Product] = []
        self.o: list[Product] = []
        self.gate_up: list[Product] = []
        self.down: list[Product] = []
        self.norm_attn: list[torch.Tensor] = []
        self.norm_mlp: list[torch.Tensor] = []
        with torch.inference_mode():
            # RoPE's default frequencies (unsupported_reason refuses the other types), as transformers'
            # LlamaRotaryEmbedding computes them: 1 / theta^(2i / head_dim), no attention scaling.
            rope = getattr(cfg, "rope_parameters", None) or {}
            theta = float(rope.get("rope_theta") or getattr(cfg, "rope_theta", None) or 10000.0)
            steps = torch.arange(0, self.head_dim, 2, dtype=torch.float, device=self.device) / self.head_dim
            self.inv_freq = 1.0 / (theta**steps)  # [head_dim / 2]
            self.rope_scaling = 1.0
            if lm.gguf_weights is not None and self.device.type == "cpu" and lowbit.int4_kernels_available():
                self._load_gguf(lm.gguf_weights, lm.lowbit_cache, pack)
            else:
                if lm.gguf_weights is not None:
                    log.info("GENAI_WEIGHTS=gguf needs the CPU int4 kernels; running de-quantized weights")
                self._load_dense(lm.module(), pack)  # the module with its weights, loaded again if let go
        products: list[Product] = [*self.qkv, *self.o, *self.gate_up, *self.down, self.lm_head]
        self.packed = all(not isinstance(p, Linear) or p.packed for p in products)
        self.geometry = LayerGeometry(
            self.heads, self.kv_heads, self.head_dim, self.intermediate, self.eps, self.dtype, self.cache_dtype
        )
        self._layer_weights = [
            LayerWeights(self.norm_attn[i], self.norm_mlp[i], self.qkv[i], self.o[i], self.gate_up[i], self.down[i])
            for i in range(self.layers)
        ]  # built once: `forward` hands one to each layer of every step
        # Set by loading.py where compiled_layer.py could compile `decoder_layer` for these weights (GGUF, CPU).
        self.compiled: CompiledLayers | None = None

    def _load_dense(self, model: Any, pack: bool) -> None:
        """The transformers model's own (de-quantized) weights, prepacked for oneDNN."""
        # Copies, not views: a view of a memory-mapped checkpoint (float32 loads map the whole file) would
        # keep every page of it resident after the module lets go of its weights.
        embed = model.model.embed_tokens.weight.detach().clone()
        self.embed: Callable[[torch.Tensor], torch.Tensor] = lambda ids: F.embedding(ids, embed)
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.qkv.append(Linear(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]), pack))
            self.o.append(Linear(attn.o_proj.weight, pack))
            self.gate_up.append(Linear(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), pack))
            self.down.append(Linear(mlp.down_proj.weight, pack))
            self.norm_attn.append(layer.input_layernorm.weight.detach().clone())
            self.norm_mlp.append(layer.post_attention_layernorm.weight.detach().clone())
        self.norm_final = model.model.norm.weight.detach().clone()
        self.lm_head: Product = Linear(model.lm_head.weight, pack)

    def _load_gguf(self, path: Path, cache: Path | None, pack: bool) -> None:
        """The GGUF file's tensors, as lowbit.py packs them (its docstring says which kernel gets what), from
        the packed copy kept in `cache` after the first start."""
        self.weights = "gguf"
        state = lowbit.packed_state(path, cache, self.layers, self.heads, self.kv_heads)
        loaded = lowbit.build_llama_weights(state, self.layers, self.dtype, lambda weight: Linear(weight, pack))
        self.embed = loaded.embed
        self.qkv, self.o, self.gate_up, self.down = loaded.qkv, loaded.o, loaded.gate_up, loaded.down
        self.norm_attn, self.norm_mlp, self.norm_final = loaded.norm_attn, loaded.norm_mlp, loaded.norm_final
        self.lm_head = loaded.lm_head

    def parameter_count(self) -> int:
        """The model's parameters as transformers counts them (a tied output head once), from its shapes: the
        count /info reports without building transformers' module."""
        cfg = self.lm.config
        hidden, vocab = int(cfg.hidden_size), int(cfg.vocab_size)
        attention = hidden * (self.heads + 2 * self.kv_heads) * self.head_dim + self.heads * self.head_dim * hidden
        mlp = 3 * hidden * self.intermediate
        head = 0 if getattr(cfg, "tie_word_embeddings", False) else vocab * hidden
        return vocab * hidden + self.layers * (attention + mlp + 2 * hidden) + hidden + head

    def new_cache(self, rows: int, capacity: int) -> torch.Tensor:
        """[layers, 2 (keys, values), rows, kv_heads, capacity, head_dim], zeroed (masked slots must be finite)."""
        return torch.zeros(
            (self.layers, 2, rows, self.kv_heads, capacity, self.head_dim), dtype=self.cache_dtype, device=self.device
        )

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, weight, self.eps, self.dtype)

    def layer_weights(self, i: int) -> LayerWeights:
        return self._layer_weights[i]

    def forward(
        self, ids: torch.Tensor, positions: torch.Tensor, cache: torch.Tensor, last: torch.Tensor | None
    ) -> torch.Tensor:
        """Run `ids` [n, S] at `positions` [n, S] against `cache` (a [layers, 2, n, …] view whose row b holds
        sequence b), writing their keys and values at those positions; float32 logits [n, vocab] at column
        `last[b]` of each row, or [n, S, vocab] at every column when `last` is None. Keys at positions above
        a query's are masked, so what a row's cache holds beyond its own length is never read."""
        n = ids.shape[0]
        span = int(positions.max()) + 1  # keys 0..span-1 are visible to someone
        x = self.embed(ids)  # [n, S, hidden]
        cos, sin, mask = self.rope_and_mask(positions, span)

        rows = torch.arange(n, device=ids.device)[:, None]
        compiled = self._compiled_for(positions, cache, span)
        if compiled is not None:
            positions = positions.contiguous()  # laid out as traced (an expanded row would be read as a full one)
        for i in range(self.layers):
            if compiled is not None:
                x = compiled(i, x, cos, sin, mask, cache[i], rows, positions)
            else:
                x = decoder_layer(self.geometry, x, cos, sin, mask, cache[i], rows, positions, self.layer_weights(i))
        if last is not None:
            x = x[torch.arange(n, device=ids.device), last]  # [n, hidden]: only the positions whose logits are wanted
        return self.lm_head(self._rms(x, self.norm_final)).float()

    def rope_and_mask(self, positions: torch.Tensor, span: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What every layer of a step at `positions` [n, S] shares: RoPE's cos and sin [n, S, 1, head_dim] (as
        transformers computes them: float32, then the model's dtype) and the additive mask
        [n*kv_heads, group*S, span] under which query (b, s) sees the keys at positions <= positions[b, s]."""
        n, s = positions.shape
        kv_heads, group = self.kv_heads, self.heads // self.kv_heads
        freqs = positions.float()[..., None] * self.inv_freq  # [n, S, dim/2]
        angles = torch.cat([freqs, freqs], dim=-1)
        cos = (angles.cos() * self.rope_scaling).to(self.dtype)[:, :, None, :]
        sin = (angles.sin() * self.rope_scaling).to(self.dtype)[:, :, None, :]
        visible = torch.arange(span, device=positions.device)[None, None, :] <= positions[:, :, None]  # [n, S, span]
        mask = torch.zeros(visible.shape, dtype=self.cache_dtype, device=positions.device).masked_fill_(
            ~visible, float("-inf")
        )
        mask = mask[:, None, None].expand(n, kv_heads, group, s, span).reshape(n * kv_heads, group * s, span)
        return cos, sin, mask

    def _compiled_for(self, positions: torch.Tensor, cache: torch.Tensor, span: int) -> CompiledLayers | None:
        """The compiled layer where this call's cache is laid out as it was traced for (any distance between
        its keys and values, as a row range of a larger cache has; rows, heads and positions contiguous) and its positions are in range (the compiled bounds checks abort the process where
        the eager indexing raises an IndexError); else None: the eager layer."""
        if self.compiled is None or positions.dtype != torch.long:
            return None
        kv_heads, capacity, dim = cache.shape[3:]
        if cache.stride()[2:] != (kv_heads * capacity * dim, capacity * dim, dim, 1):
            return None
        if span > capacity or int(positions.min()) < 0:
            return None
        return self.compiled

    # ---- inspection: not on the serving path -----------------------------------------------

    def trace(self, ids: torch.Tensor, attention_layers: Collection[int] = ()) -> DecoderTrace:
        """One sequence `ids` [S] from position 0, without a cache, keeping what `forward` lets go: every
        layer's output and, for `attention_layers`, each head's attention weights, by an explicit
        softmax(QKᵀ/√d + causal mask) (the flash kernel returns none). Same products, RoPE, norms and
        softmax precision as `forward`, so its last layer gives `forward`'s logits (the inspection tests)."""
        s = ids.shape[0]
        heads, kv_heads, dim, half = self.heads, self.kv_heads, self.head_dim, self.head_dim // 2
        x = self.embed(ids[None])  # [1, S, hidden]
        freqs = torch.arange(s, device=ids.device).float()[:, None] * self.inv_freq  # [S, dim/2]
        angles = torch.cat([freqs, freqs], dim=-1)
        cos = (angles.cos() * self.rope_scaling).to(self.dtype)[None, :, None, :]  # [1, S, 1, dim]
        sin = (angles.sin() * self.rope_scaling).to(self.dtype)[None, :, None, :]
        future = torch.ones(s, s, dtype=torch.bool, device=ids.device).triu(1)  # [S query, S key]: key after query
        mask = torch.zeros((s, s), dtype=self.cache_dtype, device=ids.device).masked_fill_(future, float("-inf"))
        hidden = [x[0]]
        attentions: dict[int, torch.Tensor] = {}
        for i in range(self.layers):
            h = self._rms(x, self.norm_attn[i])
            qkv = self.qkv[i](h).view(1, s, heads + 2 * kv_heads, dim)
            qk = qkv[:, :, : heads + kv_heads]
            qk = qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], dim=-1) * sin
            q = qk[0, :, :heads].to(self.cache_dtype).transpose(0, 1)  # [heads, S, dim]
            # Query head j reads key/value head j // group (transformers' repeat_kv): [heads, S, dim] each.
            keys = qk[0, :, heads:].to(self.cache_dtype).transpose(0, 1).repeat_interleave(heads // kv_heads, dim=0)
            values = (
                qkv[0, :, heads + kv_heads :]
                .to(self.cache_dtype)
                .transpose(0, 1)
                .repeat_interleave(heads // kv_heads, dim=0)
            )
            scores = torch.baddbmm(mask.expand(heads, s, s), q, keys.transpose(1, 2), alpha=self.scale)  # [heads, S, S]
            probs = torch.softmax(
                scores.float(), dim=-1
            )  # [heads, S query, S key]: rows sum to 1, zero above the diagonal
            if i in attention_layers:
                attentions[i] = probs
            attended = torch.bmm(probs.to(self.cache_dtype), values)  # [heads, S, dim]
            x = x + self.o[i](attended.transpose(0, 1).reshape(1, s, heads * dim).to(self.dtype))
            h = self._rms(x, self.norm_mlp[i])
            gate_up = self.gate_up[i](h)
            x = x + self.down[i](F.silu(gate_up[..., : self.intermediate]) * gate_up[..., self.intermediate :])
            hidden.append(x[0])
        return DecoderTrace(hidden=hidden, attentions=attentions)

    def lens_logits(self, states: torch.Tensor) -> torch.Tensor:
        """The final norm and the output layer applied to any layer's states [..., hidden]: float32 [..., vocab]
        (the logit lens; of the last layer's output, what `forward` returns)."""
        return self.lm_head(self._rms(states, self.norm_final)).float()


@dataclass(frozen=True)
class LayerGeometry:
    """The sizes and precisions one decoder layer runs with (`decoder_layer`'s constants)."""

    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    eps: float
    dtype: torch.dtype  # the residual stream's and the norms'
    cache_dtype: torch.dtype  # keys, values and attention's


@dataclass
class LayerWeights:
    """One layer's norms and products."""

    norm_attn: torch.Tensor
    norm_mlp: torch.Tensor
    qkv: Product
    o: Product
    gate_up: Product
    down: Product


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """As transformers' LlamaRMSNorm: in float32, then back to the model's dtype, then the weight."""
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(dtype)


def decoder_layer(
    g: LayerGeometry,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    mask: torch.Tensor,
    layer_cache: torch.Tensor,
    rows: torch.Tensor,
    positions: torch.Tensor,
    w: LayerWeights,
) -> torch.Tensor:
    """One layer of `LlamaDecoder.forward` over x [n, S, hidden]: the residual stream after it, [n, S, hidden].

    cos, sin [n, S, 1, head_dim]; mask [n*kv_heads, group*S, span] (additive: 0 where a query sees a key);
    layer_cache [2, n, kv_heads, capacity, head_dim], written at `positions` [n, S] of rows `rows` [n, 1].
    A plain function of tensors so that compiled_layer.py can compile it as it is."""
    n, s = x.shape[0], x.shape[1]
    heads, kv_heads, dim = g.heads, g.kv_heads, g.head_dim
    group, half, span = heads // kv_heads, g.head_dim // 2, mask.shape[-1]
    h = rms_norm(x, w.norm_attn, g.eps, g.dtype)
    qkv = w.qkv(h).view(n, s, heads + 2 * kv_heads, dim)
    qk = qkv[:, :, : heads + kv_heads]
    rotated = torch.cat([-qk[..., half:], qk[..., :half]], dim=-1)
    qk = qk * cos + rotated * sin
    q = qk[:, :, :heads].to(g.cache_dtype)
    kv_new = (
        torch.cat([qk[:, :, heads:], qkv[:, :, heads + kv_heads :]], dim=2)
        .view(n, s, 2, kv_heads, dim)
        .to(g.cache_dtype)
    )
    layer_cache[:, rows, :, positions] = kv_new
    keys = layer_cache[0, :, :, :span].reshape(n * kv_heads, span, dim)  # a view: rows are strided alike
    values = layer_cache[1, :, :, :span].reshape(n * kv_heads, span, dim)
    # Query heads grouped by the key/value head they share (GQA), queries of a group side by side.
    q = q.reshape(n, s, kv_heads, group, dim).permute(0, 2, 3, 1, 4).reshape(n * kv_heads, group * s, dim)
    scores = torch.baddbmm(mask, q, keys.transpose(1, 2), alpha=dim**-0.5)
    probs = torch.softmax(scores.float(), dim=-1).to(g.cache_dtype)
    attended = torch.bmm(probs, values)  # [n*kv_heads, group*S, dim]
    attended = attended.view(n, kv_heads, group, s, dim).permute(0, 3, 1, 2, 4).reshape(n, s, heads * dim)
    x = x + w.o(attended.to(g.dtype))
    h = rms_norm(x, w.norm_mlp, g.eps, g.dtype)
    gate_up = w.gate_up(h)
    return x + w.down(F.silu(gate_up[..., : g.intermediate]) * gate_up[..., g.intermediate :])


@dataclass
class DecoderTrace:
    """What `LlamaDecoder.trace` keeps of one pass over S tokens."""

    hidden: list[
        torch.Tensor
    ]  # layers + 1 of [S, hidden]: the embeddings, then each layer's output (before the final norm)
    attentions: dict[int, torch.Tensor]  # layer -> [heads, S query, S key], float32, for the layers asked
