"""The lean decoder's layer (`llama_decoder.decoder_layer`) compiled ahead of time, for the GGUF's int4 weights.

Why: a decode step at one row spends about as long in the ~40 small kernels around each layer's four int4
products (norms, RoPE, the cache write, attention, casts), each launched from Python, as in the products
themselves. AOTInductor (torch.export, then inductor's C++ code generation) fuses them into a few loops and
runs the whole layer as one call from a compiled library. The same compiled layer serves every layer (its
weights are inputs, not constants) and every batch size, prompt length, cache length and cache capacity
(the shapes are symbolic, and so is the distance between the cache's keys and values, so row ranges of a
larger cache work): one compile, kept on disk in cache_dir, read back in milliseconds by later starts.

The compile needs a C++ compiler and takes 15-40 s on two cores; it happens where the compiled library is
missing (`python -m service provision` does it ahead of `make serve`). It is opt-in (GENAI_COMPILED_STEP=on):
its rounding misses the default's fidelity rule on bench/precision.py's prompts (docs/models.md). Where it fails, or where the compiled
layer does not reproduce the eager one on a probe, the decoder runs the eager layer and a log line says why.
The fused loops round differently from the eager kernels (float32 sums in another order), so the compiled
layer's outputs differ from the eager ones by float rounding; bench/precision.py measures what that does to
the next-token agreement.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from service.language import lowbit
from service.language.llama_decoder import LayerGeometry, LayerWeights, LlamaDecoder, decoder_layer

log = logging.getLogger("service.language")

FORMAT = 1  # bump when decoder_layer or the inputs below change: a library of another format is compiled again
INT4_PARTS = ("qkv", "o", "gate_up", "down")


class _Int4Layer(torch.nn.Module):
    """`decoder_layer` over tensors only (norms, then each product's packed weights and scales), for export."""

    def __init__(self, geometry: LayerGeometry) -> None:
        super().__init__()
        self.geometry = geometry

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        layer_cache: torch.Tensor,
        rows: torch.Tensor,
        positions: torch.Tensor,
        norm_attn: torch.Tensor,
        norm_mlp: torch.Tensor,
        qkv: torch.Tensor,  # each product's packed weights, then its scales_and_zeros
        qkv_scales: torch.Tensor,
        o: torch.Tensor,
        o_scales: torch.Tensor,
        gate_up: torch.Tensor,
        gate_up_scales: torch.Tensor,
        down: torch.Tensor,
        down_scales: torch.Tensor,
    ) -> torch.Tensor:
        int4 = lowbit.Int4Linear.from_packed
        weights = LayerWeights(
            norm_attn,
            norm_mlp,
            int4(qkv, qkv_scales),
            int4(o, o_scales),
            int4(gate_up, gate_up_scales),
            int4(down, down_scales),
        )
        return decoder_layer(self.geometry, x, cos, sin, mask, layer_cache, rows, positions, weights)


def layer_inputs(decoder: LlamaDecoder, i: int) -> tuple[torch.Tensor, ...]:
    """Layer i's weights as `_Int4Layer` takes them."""
    packed: list[torch.Tensor] = []
    for part in INT4_PARTS:
        product = getattr(decoder, part)[i]
        assert isinstance(product, lowbit.Int4Linear)
        packed += [product.packed, product.scales_and_zeros]
    return (decoder.norm_attn[i], decoder.norm_mlp[i], *packed)


def load_library(path: Path) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
    """The compiled library's entry point over a flat list of input tensors, by AOTInductor's C++ loader
    (4 ms here). `torch._inductor.aoti_load_package` wraps the same loader but imports inductor and
    torch.export first (3.3 s, most of a start) and re-reads the input spec at every call."""
    aoti = getattr(torch._C, "_aoti", None)
    loader_class = getattr(aoti, "AOTIModelPackageLoader", None)
    if loader_class is None:  # another torch's layout: the public route
        model = torch._inductor.aoti_load_package(str(path))
        return lambda inputs: [model(*inputs)]
    loader = loader_class(str(path), "model", False, 1, -1)  # model name, single-threaded, runners, device
    run: Callable[[list[torch.Tensor]], list[torch.Tensor]] = loader.boxed_run
    return run


class CompiledInt4Layers:
    """The compiled layer with each layer's weights: `(i, x, cos, sin, mask, layer_cache, rows, positions)`."""

    def __init__(
        self, run: Callable[[list[torch.Tensor]], list[torch.Tensor]], decoder: LlamaDecoder, path: Path
    ) -> None:
        self.run, self.path = run, path
        self.inputs = [layer_inputs(decoder, i) for i in range(decoder.layers)]

    def __call__(
        self,
        i: int,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        layer_cache: torch.Tensor,
        rows: torch.Tensor,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        return self.run([x, cos, sin, mask, layer_cache, rows, positions, *self.inputs[i]])[0]


def compilable(decoder: LlamaDecoder) -> str | None:
    """None when every layer's products are int4 (the layer this module compiles); else why not."""
    if decoder.device.type != "cpu":
        return f"device {decoder.device.type}"
    for part in INT4_PARTS:
        if not all(isinstance(p, lowbit.Int4Linear) for p in getattr(decoder, part)):
            return f"{part} products that are not int4"
    return None


def library_path(decoder: LlamaDecoder, folder: Path, threads: int) -> Path:
    """One library per everything the generated code depends on: torch, the CPU's vector instructions, the
    engine's thread count (inductor writes it into the loops), the layer's sizes and dtypes, and this module's
    format."""
    hidden = decoder.norm_attn[0].shape[0]
    key = repr(
        (
            FORMAT,
            torch.__version__,
            torch.backends.cpu.get_cpu_capability(),
            threads,
            hidden,
            decoder.geometry,
        )
    )
    return folder / f"layer-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt2"


def _example(decoder: LlamaDecoder) -> tuple[torch.Tensor, ...]:
    """Inputs to trace with: 2 rows of 3 tokens, the cache a view of a larger one (so the stride between its
    keys and values is traced as its own symbol, not as the view's contiguous stride)."""
    g, hidden = decoder.geometry, decoder.norm_attn[0].shape[0]
    n, s, span, capacity = 2, 3, 20, 64
    group = g.heads // g.kv_heads
    cache = torch.zeros(2, n + 3, g.kv_heads, capacity, g.head_dim, dtype=g.cache_dtype)[:, :n]
    positions = (torch.arange(s)[None] + torch.tensor([[5], [9]])).contiguous()
    return (
        torch.randn(n, s, hidden, dtype=g.dtype),
        torch.randn(n, s, 1, g.head_dim, dtype=g.dtype),
        torch.randn(n, s, 1, g.head_dim, dtype=g.dtype),
        torch.zeros(n * g.kv_heads, group * s, span, dtype=g.cache_dtype),
        cache,
        torch.arange(n)[:, None],
        positions,
    )


def compile_layer(decoder: LlamaDecoder, path: Path, threads: int) -> None:
    """Export `_Int4Layer` with symbolic shapes and compile it with AOTInductor into `path` (written whole or
    not at all), its loops parallel over `threads` (the engine's, not the calling thread's)."""
    example = (*_example(decoder), *layer_inputs(decoder, 0))
    auto = torch.export.Dim.AUTO
    dynamic = (
        {0: auto, 1: auto},  # x
        {0: auto, 1: auto},  # cos
        {0: auto, 1: auto},  # sin
        {0: auto, 1: auto, 2: auto},  # mask
        {1: auto, 3: auto},  # layer_cache: rows, capacity
        {0: auto},  # rows
        {0: auto, 1: auto},  # positions
    ) + (None,) * (len(example) - 7)
    with torch.inference_mode():
        exported = torch.export.export(_Int4Layer(decoder.geometry), example, dynamic_shapes=dynamic)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.pt2")
    try:
        with torch._inductor.config.patch({"cpp.threads": threads}):
            torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _reproduces_eager(compiled: CompiledInt4Layers, decoder: LlamaDecoder) -> float:
    """The largest difference between the compiled and the eager layer 0 on a probe, relative to the output's
    largest value (float rounding: about 1e-3 at most where the products' bfloat16 inputs round apart)."""
    generator = torch.Generator().manual_seed(0)
    g = decoder.geometry
    x, cos, sin, mask, cache, rows, positions = _example(decoder)
    x = torch.randn(x.shape, generator=generator).to(g.dtype)
    cos, sin, mask = decoder.rope_and_mask(positions, mask.shape[-1])
    with torch.inference_mode():
        eager_cache, compiled_cache = cache.clone(), cache.clone()
        want = decoder_layer(g, x, cos, sin, mask, eager_cache, rows, positions, decoder.layer_weights(0))
        got = compiled(0, x, cos, sin, mask, compiled_cache, rows, positions)
    if got.shape != want.shape or not torch.isfinite(got).all():
        return float("inf")
    scale = float(want.abs().max()) or 1.0
    cache_scale = float(eager_cache.abs().max()) or 1.0
    return max(
        float((got.float() - want.float()).abs().max()) / scale,
        float((compiled_cache - eager_cache).abs().max()) / cache_scale,
    )


def _load_checked(decoder: LlamaDecoder, path: Path) -> tuple[CompiledInt4Layers, float]:
    """The library at `path` over the decoder's weights, and how far it is from the eager layer on a probe.
    The probe runs on a thread of its own: the compiled loops start a team of OpenMP threads in the thread
    that calls them, and only the engine's thread should keep one (see GenerationEngine.start)."""
    outcome: list[tuple[CompiledInt4Layers, float] | BaseException] = []

    def probe() -> None:
        try:
            compiled = CompiledInt4Layers(load_library(path), decoder, path)
            outcome.append((compiled, _reproduces_eager(compiled, decoder)))
        except Exception as exc:  # handed to the caller
            outcome.append(exc)

    thread = threading.Thread(target=probe, name="compiled-step-probe")
    thread.start()
    thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def load_or_compile(decoder: LlamaDecoder, folder: Path, threads: int) -> CompiledInt4Layers | None:
    """The compiled layer for `decoder` (its loops over `threads`) from `folder`, compiled there first where
    missing or unreadable; None (and a log line) where it cannot be compiled or loaded, or does not reproduce
    the eager layer."""
    reason = compilable(decoder)
    if reason is not None:
        log.info("compiled step: not for this decoder (%s); running the eager layer", reason)
        return None
    path = library_path(decoder, folder, threads)
    started = time.perf_counter()
    try:
        try:
            compiled, difference = _load_checked(decoder, path)
        except Exception as exc:  # missing, partial or of another build: compile it again
            if path.is_file():
                log.info("compiled step: %s unreadable (%s); compiling it again", path, exc)
            log.info("compiled step: compiling the decoder layer into %s (once; 15-40 s on two cores)", path)
            compile_layer(decoder, path, threads)
            compiled, difference = _load_checked(decoder, path)
    except Exception as exc:  # a compiler missing or failing: serving goes on eagerly
        log.warning("compiled step: unavailable (%s: %s); running the eager layer", type(exc).__name__, exc)
        return None
    if difference > 1e-2:
        log.warning(
            "compiled step: differs from the eager layer by %.3g (relative); running the eager layer", difference
        )
        return None
    log.info(
        "compiled step: %s ready in %.2f s (relative difference to the eager layer on a probe: %.1e)",
        path.name,
        time.perf_counter() - started,
        difference,
    )
    return compiled
