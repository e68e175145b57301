"""A GGUF file's own low-bit weights, packed for PyTorch's CPU kernels instead of de-quantized.

The embedded model is Q4_1 (blocks of 32 weights along a row: fp16 `d`, fp16 `m`, 32 four-bit `q`, so
`w = d·q + m`) with a Q8_0 token embedding (fp16 `d`, 32 int8 `q`: `w = d·q`) tied to the output head.
  - Q4_1 rows go to `Int4Linear`: `aten._convert_weight_to_int4pack_for_cpu` packs `q` once and
    `aten._weight_int4pack_mm_for_cpu` multiplies with it directly, group size 32, with scales and zeros
    chosen so that its `(q − 8)·scale + zero` is `d·q + m` (scale = d, zero = m + 8·d). The scales are
    kept in the activations' dtype (the kernel wants them so): exact in float32, rounded to 8 bits of
    mantissa in bfloat16 (the largest reconstruction difference, see tests/language/test_lowbit.py).
  - The Q8_0 embedding is looked up from its int8 rows and block scales (`Q8Embedding`, exact); the tied
    output head multiplies with its de-quantized rows in bfloat16 (oneDNN-packed by the caller), which
    measured faster than `aten._weight_int8pack_mm` (one scale per row, so Q8_0's per-block scales would
    be requantized too) at every batch size (bench/lowbit_kernels.py). `Int8Linear` is kept for that bench.
  - Products run in bfloat16 activations whatever the model's dtype (the int4 kernel is 20-30x slower in
    float32); in a float32 model the rest of the step (norms, residual stream, attention) stays float32.
  - Any other type is de-quantized (gguf's reference code) into a plain weight, with a log line saying so.

GGUF stores the q and k projections of Llama models with their rows permuted (llama.cpp's converter
interleaves each head's two rotary halves); `hf_rows` undoes that as transformers' GGUF loader does.
Rows move whole, so the blocks (which run along a row) move with them unchanged.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("service.language")

GROUP = 32  # weights per block in Q4_1 and Q8_0, and the int4 kernel's group size


def int4_kernels_available() -> bool:
    return hasattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu") and hasattr(
        torch.ops.aten, "_weight_int4pack_mm_for_cpu"
    )


# ---- reading the file --------------------------------------------------------------------------


class GgufWeights:
    """The tensors of one GGUF file by name, read through `gguf.GGUFReader` (memory-mapped)."""

    def __init__(self, path: Path) -> None:
        import gguf

        self.path = path
        self._reader = gguf.GGUFReader(path)
        self._tensors: dict[str, Any] = {t.name: t for t in self._reader.tensors}
        self._gguf = gguf

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def type_name(self, name: str) -> str:
        return str(self._tensors[name].tensor_type.name)

    def field(self, key: str) -> Any:
        found = self._reader.fields.get(key)
        return None if found is None else found.contents()

    def raw(self, name: str) -> np.ndarray[Any, Any]:
        """The tensor's bytes as stored: [rows, bytes per row] for quantized types, the values for float ones."""
        return np.asarray(self._tensors[name].data)

    def dequantized(self, name: str) -> torch.Tensor:
        """float32 [rows, columns] (or [n] for a vector), by gguf's own reference de-quantization."""
        tensor = self._tensors[name]
        values = self._gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
        return torch.from_numpy(np.array(values, dtype=np.float32))  # a copy: the file is mapped read-only


def q4_1_blocks(raw: np.ndarray[Any, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_1 bytes [N, K/32·20] -> q uint8 [N, K] (0..15), d and m float16 [N, K/32].

    A block is fp16 d, fp16 m, then 16 bytes whose low nibbles are weights 0..15 and high nibbles 16..31."""
    n = raw.shape[0]
    blocks = raw.reshape(n, -1, 20)
    d = torch.from_numpy(np.ascontiguousarray(blocks[:, :, 0:2]).view(np.float16)[..., 0].copy())
    m = torch.from_numpy(np.ascontiguousarray(blocks[:, :, 2:4]).view(np.float16)[..., 0].copy())
    nibbles = torch.from_numpy(np.ascontiguousarray(blocks[:, :, 4:20]))  # [N, K/32, 16]
    q = torch.cat([nibbles & 0x0F, nibbles >> 4], dim=-1).reshape(n, -1)
    return q, d, m


def q8_0_blocks(raw: np.ndarray[Any, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Q8_0 bytes [N, K/32·34] -> q int8 [N, K], d float16 [N, K/32]. A block is fp16 d, then 32 int8 weights."""
    n = raw.shape[0]
    blocks = raw.reshape(n, -1, 34)
    d = torch.from_numpy(np.ascontiguousarray(blocks[:, :, 0:2]).view(np.float16)[..., 0].copy())
    q = torch.from_numpy(np.ascontiguousarray(blocks[:, :, 2:34]).view(np.int8).copy()).reshape(n, -1)
    return q, d


def hf_rows(rows: int, heads: int) -> torch.Tensor:
    """Row order of transformers' q/k weight in terms of GGUF's: hf[i] = gguf[order[i]] (its reverse permute)."""
    half = rows // heads // 2
    return torch.arange(rows).reshape(heads, half, 2).transpose(1, 2).reshape(rows)


# ---- packed layers -------------------------------------------------------------------------------


@dataclass
class Q4Rows:
    """Q4_1 rows before packing: q [N, K] 0..15, d and m float16 [N, K/32]."""

    q: torch.Tensor
    d: torch.Tensor
    m: torch.Tensor

    def take(self, order: torch.Tensor) -> Q4Rows:
        return Q4Rows(self.q[order], self.d[order], self.m[order])

    @staticmethod
    def cat(parts: Sequence[Q4Rows]) -> Q4Rows:
        return Q4Rows(*(torch.cat([getattr(p, f) for p in parts]) for f in ("q", "d", "m")))

    def dequantized(self) -> torch.Tensor:
        """float32 [N, K]: d·q + m, computed as llama.cpp does (fp16 d, m widened to float32)."""
        n, k = self.q.shape
        blocks = self.q.view(n, k // GROUP, GROUP).float()
        return (blocks * self.d.float()[..., None] + self.m.float()[..., None]).view(n, k)


class Int4Linear:
    """y = x Wᵀ with W = d·q + m held as packed int4 (0.5 byte a weight) plus scales and zeros per group of 32.

    The kernel runs in `dtype` (bfloat16 by default, whatever the model's dtype: with float32 activations
    it is 20-30x slower, bench/lowbit_kernels.py); the result comes back in the input's dtype."""

    def __init__(self, rows: Q4Rows, dtype: torch.dtype = torch.bfloat16) -> None:
        n, k = rows.q.shape
        if k % GROUP or n % 8:
            raise ValueError(f"int4 packing needs K divisible by {GROUP} and N by 8, got {n}x{k}")
        self.out_features, self.in_features, self.dtype = n, k, dtype
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(rows.q.to(torch.int32).contiguous(), 1)
        d, m = rows.d.float(), rows.m.float()
        # [K/32, N, 2]: the kernel's (q - 8)·scale + zero with scale d and zero m + 8·d is d·q + m.
        self.scales_and_zeros = torch.stack([d, m + 8 * d], dim=-1).transpose(0, 1).contiguous().to(dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if flat.dtype != self.dtype:
            flat = flat.to(self.dtype)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat.contiguous(), self.packed, GROUP, self.scales_and_zeros)
        result: torch.Tensor = out.view(*shape[:-1], self.out_features).to(x.dtype)
        return result

    def reconstructed(self) -> torch.Tensor:
        """float32 [N, K]: the weights this layer multiplies with, read back through its own kernel (x = I)."""
        eye = torch.eye(self.in_features, dtype=self.dtype)
        return self(eye).float().T.contiguous()


class Int8Linear:
    """y = x Wᵀ with W held as int8 rows and one scale per row (`aten._weight_int8pack_mm`)."""

    def __init__(self, weight: torch.Tensor, dtype: torch.dtype) -> None:
        weight = weight.float()
        self.out_features, self.in_features, self.dtype = weight.shape[0], weight.shape[1], dtype
        scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127
        self.q = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8).contiguous()
        self.scales = scale.to(dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).to(self.dtype).contiguous()
        out = torch.ops.aten._weight_int8pack_mm(flat, self.q, self.scales)
        result: torch.Tensor = out.view(*shape[:-1], self.out_features)
        return result

    def reconstructed(self) -> torch.Tensor:
        return self.q.float() * self.scales.float()[:, None]


class Q8Embedding:
    """Token embedding looked up from Q8_0 rows: int8 q [V, K] and float32 d [V, K/32], w = d·q (exact)."""

    def __init__(self, q: torch.Tensor, d: torch.Tensor, dtype: torch.dtype) -> None:
        self.q, self.d, self.dtype = q.contiguous(), d.float().contiguous(), dtype
        self.rows, self.width = q.shape

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        q = F.embedding(ids, self.q.view(torch.uint8)).view(torch.int8)  # embedding has no int8 kernel: bytes
        d = F.embedding(ids, self.d)
        values = q.float().view(*ids.shape, -1, GROUP) * d[..., None]
        return values.view(*ids.shape, self.width).to(self.dtype)

    def dequantized(self) -> torch.Tensor:
        return (self.q.float().view(self.rows, -1, GROUP) * self.d[..., None]).view(self.rows, self.width)


Product = Callable[[torch.Tensor], torch.Tensor]  # x [..., in] -> x Wᵀ [..., out]


@dataclass
class InDtype:
    """A product run in `dtype` (its weights'), its result handed back in the input's dtype."""

    product: Product
    dtype: torch.dtype

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.product(x.to(self.dtype)).to(x.dtype)


@dataclass
class LlamaWeights:
    """A Llama model's weights as the lean decoder runs them, q/k rows in transformers' order."""

    embed: Callable[[torch.Tensor], torch.Tensor]  # ids [...] -> [..., hidden] in the model's dtype
    qkv: list[Product]
    o: list[Product]
    gate_up: list[Product]
    down: list[Product]
    norm_attn: list[torch.Tensor]
    norm_mlp: list[torch.Tensor]
    norm_final: torch.Tensor
    lm_head: Product
    kinds: dict[str, int]  # how many products of each kind: "int4", "dense"


def load_llama_weights(
    tensors: GgufWeights,
    layers: int,
    heads: int,
    kv_heads: int,
    dtype: torch.dtype,
    dense: Callable[[torch.Tensor], Product],
) -> LlamaWeights:
    """Q4_1 products (q/k/v and gate/up fused) to `Int4Linear`; anything else, and the output head, to
    `dense(weight)` over the de-quantized float32 weight cast to `dtype` (the caller's dense product: the
    output head measured faster in bfloat16 oneDNN than in int8, bench/lowbit_kernels.py); a Q8_0 embedding
    to `Q8Embedding`. Every fallback is logged once with the tensors it covers."""
    kinds = {"int4": 0, "dense": 0}
    fallbacks: list[str] = []

    def product(names: list[str], permute: list[int | None]) -> Product:
        if all(tensors.type_name(n) == "Q4_1" for n in names):
            parts = []
            for name, perm_heads in zip(names, permute, strict=True):
                rows = Q4Rows(*q4_1_blocks(tensors.raw(name)))
                parts.append(rows.take(hf_rows(rows.q.shape[0], perm_heads)) if perm_heads else rows)
            fused = parts[0] if len(parts) == 1 else Q4Rows.cat(parts)
            if fused.q.shape[1] % GROUP == 0 and fused.q.shape[0] % 8 == 0:
                kinds["int4"] += 1
                return Int4Linear(fused)
        fallbacks.extend(f"{n} ({tensors.type_name(n)})" for n in names)
        weights = []
        for name, perm_heads in zip(names, permute, strict=True):
            weight = tensors.dequantized(name)
            weights.append(weight[hf_rows(weight.shape[0], perm_heads)] if perm_heads else weight)
        kinds["dense"] += 1
        return dense(torch.cat(weights).to(dtype))

    def vector(name: str) -> torch.Tensor:
        return tensors.dequantized(name).to(dtype)

    qkv, o, gate_up, down, norm_attn, norm_mlp = [], [], [], [], [], []
    for i in range(layers):
        b = f"blk.{i}."
        qkv.append(product([b + "attn_q.weight", b + "attn_k.weight", b + "attn_v.weight"], [heads, kv_heads, None]))
        o.append(product([b + "attn_output.weight"], [None]))
        gate_up.append(product([b + "ffn_gate.weight", b + "ffn_up.weight"], [None, None]))
        down.append(product([b + "ffn_down.weight"], [None]))
        norm_attn.append(vector(b + "attn_norm.weight"))
        norm_mlp.append(vector(b + "ffn_norm.weight"))
    head_name = "output.weight" if "output.weight" in tensors else "token_embd.weight"
    head = dense(tensors.dequantized(head_name).to(torch.bfloat16))
    lm_head = head if dtype == torch.bfloat16 else InDtype(head, torch.bfloat16)
    kinds["dense"] += 1
    embed: Callable[[torch.Tensor], torch.Tensor]
    if tensors.type_name("token_embd.weight") == "Q8_0":
        embed = Q8Embedding(*q8_0_blocks(tensors.raw("token_embd.weight")), dtype)
    else:
        table = tensors.dequantized("token_embd.weight").to(dtype)
        embed = functools.partial(F.embedding, weight=table)
        fallbacks.append(f"token_embd.weight ({tensors.type_name('token_embd.weight')})")
    if fallbacks:
        log.info(
            "GGUF weights without a low-bit kernel here, de-quantized to %s: %s",
            str(dtype).removeprefix("torch."),
            ", ".join(fallbacks[:6]) + (f" and {len(fallbacks) - 6} more" if len(fallbacks) > 6 else ""),
        )
    log.info("GGUF weights packed: %d int4 products, %d dense (output head included)", kinds["int4"], kinds["dense"])
    return LlamaWeights(embed, qkv, o, gate_up, down, norm_attn, norm_mlp, vector("output_norm.weight"), lm_head, kinds)
