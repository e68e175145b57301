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

import contextlib
import functools
import logging
import os
import pickle
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

    @classmethod
    def from_packed(cls, packed: torch.Tensor, scales_and_zeros: torch.Tensor) -> Int4Linear:
        """Over tensors an earlier instance packed (`packed`, `scales_and_zeros`: the cached state)."""
        layer = cls.__new__(cls)
        layer.packed, layer.scales_and_zeros, layer.dtype = packed, scales_and_zeros, scales_and_zeros.dtype
        layer.out_features, layer.in_features = scales_and_zeros.shape[1], scales_and_zeros.shape[0] * GROUP
        return layer

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


# What a GGUF file's tensors become before any product is built: plain tensors by name, which
# `torch.save` can cache (see `packed_state`). Products are "{kind}.{layer}" (kind: qkv, o, gate_up, down),
# each either ".packed" + ".scales_and_zeros" (int4) or ".weight" (float32, de-quantized); then
# "embed.q" + "embed.d" (Q8_0) or "embed.table", "head" (bfloat16), "norm_attn.{i}", "norm_mlp.{i}", "norm_final".
PackedState = dict[str, torch.Tensor]
PRODUCT_KINDS = ("qkv", "o", "gate_up", "down")
STATE_FORMAT = 1  # bump when the state's names or meaning change: a cache of another format is rebuilt


def read_llama_state(tensors: GgufWeights, layers: int, heads: int, kv_heads: int) -> PackedState:
    """Q4_1 products (q/k/v and gate/up fused) packed for the int4 kernel; anything else de-quantized to
    float32, logged once with the tensors it covers; the Q8_0 embedding as its int8 rows and scales; the
    output head de-quantized to bfloat16 (measured faster in oneDNN bfloat16 than in int8,
    bench/lowbit_kernels.py)."""
    state: PackedState = {}
    fallbacks: list[str] = []

    def product(key: str, names: list[str], permute: list[int | None]) -> None:
        if all(tensors.type_name(n) == "Q4_1" for n in names):
            parts = []
            for name, perm_heads in zip(names, permute, strict=True):
                rows = Q4Rows(*q4_1_blocks(tensors.raw(name)))
                parts.append(rows.take(hf_rows(rows.q.shape[0], perm_heads)) if perm_heads else rows)
            fused = parts[0] if len(parts) == 1 else Q4Rows.cat(parts)
            if fused.q.shape[1] % GROUP == 0 and fused.q.shape[0] % 8 == 0:
                layer = Int4Linear(fused)
                state[key + ".packed"], state[key + ".scales_and_zeros"] = layer.packed, layer.scales_and_zeros
                return
        fallbacks.extend(f"{n} ({tensors.type_name(n)})" for n in names)
        weights = []
        for name, perm_heads in zip(names, permute, strict=True):
            weight = tensors.dequantized(name)
            weights.append(weight[hf_rows(weight.shape[0], perm_heads)] if perm_heads else weight)
        state[key + ".weight"] = torch.cat(weights)

    for i in range(layers):
        b = f"blk.{i}."
        product(f"qkv.{i}", [b + "attn_q.weight", b + "attn_k.weight", b + "attn_v.weight"], [heads, kv_heads, None])
        product(f"o.{i}", [b + "attn_output.weight"], [None])
        product(f"gate_up.{i}", [b + "ffn_gate.weight", b + "ffn_up.weight"], [None, None])
        product(f"down.{i}", [b + "ffn_down.weight"], [None])
        state[f"norm_attn.{i}"] = tensors.dequantized(b + "attn_norm.weight")
        state[f"norm_mlp.{i}"] = tensors.dequantized(b + "ffn_norm.weight")
    state["norm_final"] = tensors.dequantized("output_norm.weight")
    head_name = "output.weight" if "output.weight" in tensors else "token_embd.weight"
    state["head"] = tensors.dequantized(head_name).to(torch.bfloat16)
    if tensors.type_name("token_embd.weight") == "Q8_0":
        state["embed.q"], state["embed.d"] = q8_0_blocks(tensors.raw("token_embd.weight"))
    else:
        state["embed.table"] = tensors.dequantized("token_embd.weight")
        fallbacks.append(f"token_embd.weight ({tensors.type_name('token_embd.weight')})")
    if fallbacks:
        log.info(
            "GGUF weights without a low-bit kernel here, de-quantized: %s",
            ", ".join(fallbacks[:6]) + (f" and {len(fallbacks) - 6} more" if len(fallbacks) > 6 else ""),
        )
    return state


def build_llama_weights(
    state: PackedState, layers: int, dtype: torch.dtype, dense: Callable[[torch.Tensor], Product]
) -> LlamaWeights:
    """The products over a packed state: `Int4Linear` where it holds int4 rows, else `dense(weight)` over the
    weight cast to `dtype` (the caller's dense product); the output head `dense` in bfloat16."""
    kinds = {"int4": 0, "dense": 0}

    def product(key: str) -> Product:
        if key + ".packed" in state:
            kinds["int4"] += 1
            return Int4Linear.from_packed(state[key + ".packed"], state[key + ".scales_and_zeros"])
        kinds["dense"] += 1
        return dense(state[key + ".weight"].to(dtype))

    products = {kind: [product(f"{kind}.{i}") for i in range(layers)] for kind in PRODUCT_KINDS}
    head = dense(state["head"])
    kinds["dense"] += 1
    embed: Callable[[torch.Tensor], torch.Tensor]
    if "embed.q" in state:
        embed = Q8Embedding(state["embed.q"], state["embed.d"], dtype)
    else:
        embed = functools.partial(F.embedding, weight=state["embed.table"].to(dtype))
    log.info("GGUF weights packed: %d int4 products, %d dense (output head included)", kinds["int4"], kinds["dense"])
    return LlamaWeights(
        embed=embed,
        qkv=products["qkv"],
        o=products["o"],
        gate_up=products["gate_up"],
        down=products["down"],
        norm_attn=[state[f"norm_attn.{i}"].to(dtype) for i in range(layers)],
        norm_mlp=[state[f"norm_mlp.{i}"].to(dtype) for i in range(layers)],
        norm_final=state["norm_final"].to(dtype),
        lm_head=head if dtype == torch.bfloat16 else InDtype(head, torch.bfloat16),
        kinds=kinds,
    )


def packed_state(path: Path, cache: Path | None, layers: int, heads: int, kv_heads: int) -> PackedState:
    """The packed state of the GGUF file at `path`, from `cache` when it holds one of this format and torch
    (memory-mapped: a second start skips the GGUF reader, which spends seconds parsing the tokenizer's
    metadata, and the packing), else read and packed now and written there for the next start."""
    expected = {"format": STATE_FORMAT, "torch": str(torch.__version__), "layers": layers}
    if cache is not None and cache.is_file():
        try:
            cached = torch.load(cache, mmap=True, weights_only=True)
            if cached.get("about") == expected:
                state: PackedState = cached["state"]
                return state
            log.info("low-bit cache %s is of another format or torch; packing again", cache)
        except (OSError, RuntimeError, EOFError, KeyError, AttributeError, pickle.UnpicklingError) as exc:
            log.info("low-bit cache %s unreadable (%s); packing again", cache, exc)
    state = read_llama_state(GgufWeights(path), layers, heads, kv_heads)
    if cache is not None:
        tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
        try:
            torch.save({"about": expected, "state": state}, tmp)
            tmp.replace(cache)
        except (
            OSError,
            RuntimeError,
        ) as exc:  # an unwritable cache folder (torch.save raises either): pack every start
            log.info("could not keep the packed low-bit weights in %s (%s); later starts pack them again", cache, exc)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    return state
