"""The low-bit path (GENAI_WEIGHTS=gguf): the embedded GGUF's own Q4_1 weights packed for the CPU int4
kernels (service/language/lowbit.py) and run by the lean decoder.

- Every packed product, read back through its own kernel, is the GGUF's de-quantized tensor (gguf's
  reference de-quantization) in transformers' row order: exactly with float32 scales; with the bfloat16
  scales the kernel runs with, within the rounding of d and m + 8d to bfloat16 plus the output's rounding.
- Next tokens agree with the float32 de-quantized model on bench/precision.py's 32 prompts (>= 31/32).
- Batched rows and rows alone, and greedy /generate over an app.
- Each of these also over the compiled layer (compiled_layer.py, GENAI_COMPILED_STEP=on):
  "float32-compiled" in the parametrized tests.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi import FastAPI

from service.app import create_app
from service.config import Settings
from service.language.engine import GenerationEngine
from service.language.llama_decoder import Linear, LlamaDecoder
from service.language.loading import embedded_gguf_path, load_language_model
from service.language.lowbit import GgufWeights, Int4Linear, Q4Rows, Q8Embedding, hf_rows, q4_1_blocks
from service.language.model import LanguageModel
from service.language.sampling import SamplingParams
from service.language.slot_batch import SlotBatch
from service.state import LoadedModels

pytestmark = pytest.mark.skipif(
    not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"), reason="this torch has no CPU int4 kernels"
)

ROOT = Path(__file__).resolve().parents[2]


def precision_prompts() -> list[str]:
    """bench/precision.py's 32 fixed prompts (the figures in docs/models.md are over them)."""
    spec = importlib.util.spec_from_file_location("bench_precision", ROOT / "bench" / "precision.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    prompts: list[str] = module.PROMPTS
    assert len(prompts) == 32
    return prompts


@pytest.fixture(scope="module")
def gguf() -> GgufWeights:
    return GgufWeights(embedded_gguf_path())


@pytest.fixture(scope="module")
def lowbit_model(settings: Settings) -> LanguageModel:
    lm = load_language_model(settings.lm_model, dtype="bfloat16", cache_dir=settings.cache_dir, weights="gguf")
    assert lm.gguf_weights == embedded_gguf_path()
    return lm


@pytest.fixture(scope="module")
def lowbit_f32_model(settings: Settings) -> LanguageModel:
    """float32 between the products (which stay bfloat16 int4): the candidate default."""
    return load_language_model(settings.lm_model, dtype="float32", cache_dir=settings.cache_dir, weights="gguf")


@pytest.fixture(scope="module")
def lowbit_compiled_model(settings: Settings) -> LanguageModel:
    """GENAI_COMPILED_STEP=on: float32 between the int4 products, the layers compiled."""
    lm = load_language_model(
        settings.lm_model, dtype="float32", cache_dir=settings.cache_dir, weights="gguf", compiled_step=2
    )
    assert LlamaDecoder.shared(lm).compiled is not None, "the compiled layer did not load (see the log)"
    return lm


FIXTURES = {"bfloat16": "lowbit_model", "float32": "lowbit_f32_model", "float32-compiled": "lowbit_compiled_model"}


def lowbit(request: pytest.FixtureRequest, dtype: str) -> LanguageModel:
    lm: LanguageModel = request.getfixturevalue(FIXTURES[dtype])
    assert LlamaDecoder.shared(lm).weights == "gguf"
    assert (LlamaDecoder.shared(lm).compiled is not None) == dtype.endswith("compiled")
    return lm


@pytest.fixture(scope="module")
def lowbit_decoder(lowbit_model: LanguageModel) -> LlamaDecoder:
    decoder = LlamaDecoder.shared(lowbit_model)
    assert decoder.weights == "gguf"
    return decoder


def gguf_rows(gguf: GgufWeights, names: list[str], heads: list[int | None]) -> torch.Tensor:
    """The de-quantized float32 rows of `names`, q/k un-permuted, stacked as the decoder fuses them."""
    parts = []
    for name, h in zip(names, heads, strict=True):
        weight = gguf.dequantized(name)
        parts.append(weight[hf_rows(weight.shape[0], h)] if h else weight)
    return torch.cat(parts)


PRODUCTS: dict[str, tuple[list[str], list[int | None]]] = {
    "qkv": (["attn_q", "attn_k", "attn_v"], [9, 3, None]),
    "o": (["attn_output"], [None]),
    "gate_up": (["ffn_gate", "ffn_up"], [None, None]),
    "down": (["ffn_down"], [None]),
}


def test_every_packed_layer_reconstructs_the_gguf_weights(
    gguf: GgufWeights, lowbit_decoder: LlamaDecoder, language_model: LanguageModel
) -> None:
    largest: tuple[float, str] = (0.0, "")
    worst_ratio = 0.0
    hf_layers = language_model.module().model.layers
    for i in range(lowbit_decoder.layers):
        for kind, (names, heads) in PRODUCTS.items():
            product = getattr(lowbit_decoder, kind)[i]
            assert isinstance(product, Int4Linear), f"layer {i} {kind} is not packed int4"
            full = [f"blk.{i}.{n}.weight" for n in names]
            want = gguf_rows(gguf, full, heads)
            got = product.reconstructed()
            # The kernel computes (q - 8)·scale + zero with bfloat16 scale = d and zero = m + 8d, and rounds
            # its output to bfloat16: each of the three is off by at most 2^-8 of its size (8 significant bits).
            rows = Q4Rows.cat(
                [
                    Q4Rows(*q4_1_blocks(gguf.raw(n))).take(hf_rows(gguf.raw(n).shape[0], h))
                    if h
                    else Q4Rows(*q4_1_blocks(gguf.raw(n)))
                    for n, h in zip(full, heads, strict=True)
                ]
            )
            n, k = rows.q.shape
            d = rows.d.float()[..., None].expand(n, k // 32, 32).reshape(n, k)
            zero = (rows.m.float() + 8 * rows.d.float())[..., None].expand(n, k // 32, 32).reshape(n, k)
            bound = ((rows.q.float() - 8).abs() * d.abs() + zero.abs() + want.abs()) * 2**-8 * 1.01 + 1e-7
            diff = (got - want).abs()
            assert bool((diff <= bound).all()), f"layer {i} {kind}: {float((diff - bound).max())} past the bound"
            worst_ratio = max(worst_ratio, float((diff / bound).max()))
            if float(diff.max()) > largest[0]:
                largest = (float(diff.max()), f"layer {i} {kind}")
            if i == 0:  # with float32 scales the packed weights are the file's numbers (the kernel is slow in float32)
                exact = Int4Linear(rows, torch.float32).reconstructed()
                assert float((exact - want).abs().max()) <= 1e-6 * float(want.abs().max())
        attn, mlp = hf_layers[i].self_attn, hf_layers[i].mlp
        dense_qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).float()
        assert torch.equal(
            gguf_rows(gguf, [f"blk.{i}.{n}.weight" for n in PRODUCTS["qkv"][0]], [9, 3, None]), dense_qkv
        )
        assert torch.equal(gguf.dequantized(f"blk.{i}.ffn_down.weight"), mlp.down_proj.weight.float())
    print(f"largest reconstruction difference {largest[0]:.3g} at {largest[1]}; worst diff/bound {worst_ratio:.2f}")
    assert largest[0] > 0  # bfloat16 scales do round: the bound above is what keeps it honest


def test_the_embedding_is_the_q8_0_table_and_the_output_head_its_dense_copy(
    gguf: GgufWeights, lowbit_decoder: LlamaDecoder, lowbit_model: LanguageModel
) -> None:
    table = gguf.dequantized("token_embd.weight")
    assert isinstance(lowbit_decoder.embed, Q8Embedding)
    assert torch.equal(lowbit_decoder.embed.dequantized(), table)
    ids = torch.tensor([[0, 7042, 49151], [5, 5, 19556]])
    assert torch.equal(lowbit_decoder.embed(ids), table[ids].bfloat16())
    assert isinstance(lowbit_decoder.lm_head, Linear)
    x = torch.randn(3, table.shape[1]).bfloat16()
    want = x.float() @ table.bfloat16().float().T
    assert float((lowbit_decoder.lm_head(x).float() - want).abs().max()) < 0.05 * float(want.abs().max())


async def _next_token_probs(engine: GenerationEngine, lm: LanguageModel, prompts: list[str]) -> torch.Tensor:
    rows = []
    for prompt in prompts:  # one at a time, as bench/precision.py asks
        logits = await engine.next_token_logits([lm.encode(prompt)])
        rows.append(torch.softmax(logits[0, : lm.vocab_size], dim=-1))
    return torch.stack(rows)


def probabilities(lm: LanguageModel, settings: Settings, prompts: list[str]) -> torch.Tensor:
    engine = GenerationEngine(lm, settings)
    engine.start()
    try:
        return asyncio.run(_next_token_probs(engine, lm, prompts))
    finally:
        engine.shutdown()


@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float32-compiled"])
def test_next_tokens_agree_with_float32_on_the_precision_prompts(
    dtype: str, settings: Settings, language_model: LanguageModel, request: pytest.FixtureRequest
) -> None:
    """bfloat16: every step in bfloat16 (as the dense bfloat16 path, 30/32 in docs/models.md, it is held to
    that); float32: the int4 products and the output head in bfloat16, the rest (norms, residual stream,
    attention) in float32, held to the default rule (>= 31/32); float32-compiled: the same, compiled."""
    prompts = precision_prompts()
    exact = probabilities(language_model, settings, prompts)
    lm = lowbit(request, dtype)
    low = probabilities(lm, settings, prompts)
    same = exact.argmax(-1) == low.argmax(-1)
    agree, worst = int(same.sum()), float((exact - low).abs().max())
    parted = [prompts[i] for i in range(len(prompts)) if not same[i]]
    print(f"low-bit ({dtype}) top-1 = float32's: {agree}/{len(prompts)} (not on {parted}); largest |Δp| {worst:.4f}")
    # float32-compiled: the same products rounded apart by the fused loops' float32 sums, 29/32 measured (its
    # three misses are near ties, top two within 0.02): below the default's rule, which is why it is opt-in.
    allowed = {"bfloat16": 2, "float32": 1, "float32-compiled": 3}[dtype]
    assert agree >= len(prompts) - allowed, f"top-1 agreement {agree}/{len(prompts)}"
    assert worst < 0.1
    assert int(low[0].argmax()) == lm.encode(" Paris")[0]


@pytest.mark.parametrize("dtype", ["bfloat16", "float32-compiled"])
def test_batched_rows_compute_what_each_computes_alone(dtype: str, request: pytest.FixtureRequest) -> None:
    lowbit_model = lowbit(request, dtype)
    lowbit_decoder = LlamaDecoder.shared(lowbit_model)
    prompts = [lowbit_model.encode(p) for p in precision_prompts()[:8]]
    together = SlotBatch(lowbit_decoder, 8).prefill(prompts)
    for row, ids in enumerate(prompts):
        alone = SlotBatch(lowbit_decoder, 1).prefill([ids])[0]
        p, q = torch.softmax(together[row], -1), torch.softmax(alone, -1)
        assert float((p - q).abs().max()) < 0.02, f"row {row}"
        assert int(together[row].argmax()) == int(alone.argmax())


@pytest.mark.parametrize("dtype", ["bfloat16", "float32-compiled"])
def test_the_inspection_trace_runs_on_the_low_bit_weights(dtype: str, request: pytest.FixtureRequest) -> None:
    """What the inspection endpoints read (service/inspect/forward.py's lean inspector): the trace's last
    layer through the logit lens gives the forward's logits (compiled or not: the trace runs eagerly), and
    attention rows are causal distributions."""
    lowbit_model = lowbit(request, dtype)
    lowbit_decoder = LlamaDecoder.shared(lowbit_model)
    ids = lowbit_model.encode("The capital of France is")
    trace = lowbit_decoder.trace(torch.tensor(ids), attention_layers={0, 29})
    lens = lowbit_decoder.lens_logits(trace.hidden[-1][-1:])[0]
    forward = SlotBatch(lowbit_decoder, 1).prefill([ids])[0]
    assert len(trace.hidden) == lowbit_decoder.layers + 1
    assert int(lens.argmax()) == int(forward.argmax()) == lowbit_model.encode(" Paris")[0]
    assert float((torch.softmax(lens, -1) - torch.softmax(forward, -1)).abs().max()) < 0.02
    for probs in trace.attentions.values():
        assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[:-1]), atol=1e-5)
        assert float(probs.triu(1).abs().max()) == 0.0


@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float32-compiled"])
def test_greedy_continuations_batched_and_alone(dtype: str, settings: Settings, request: pytest.FixtureRequest) -> None:
    lowbit_model = lowbit(request, dtype)
    prompts = precision_prompts()[:8]
    params = SamplingParams(max_new_tokens=32, ignore_eos=True)
    engine = GenerationEngine(lowbit_model, settings)

    async def run() -> tuple[list[list[int]], list[list[int]]]:
        alone = [(await engine.submit(lowbit_model.encode(p), params).result())[1].ids for p in prompts]
        handles = [engine.submit(lowbit_model.encode(p), params) for p in prompts]
        together = [(await h.result())[1].ids for h in handles]
        return alone, together

    engine.start()
    try:
        alone, together = asyncio.run(run())
    finally:
        engine.shutdown()
    differ = sum(a != b for a, b in zip(alone, together, strict=True))
    firsts = [
        next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)
        for a, b in zip(alone, together, strict=True)
    ]
    print(f"low-bit ({dtype}) greedy batched != alone: {differ}/8 (32 tokens each; first difference at {firsts})")
    assert all(len(ids) == 32 for ids in alone + together)
    # Rows round apart where two tokens are close (dense bfloat16: 2-3 of 8, docs/models.md); never at once.
    assert all(first is None or first > 0 for first in firsts)
    # Measured 4 of 8 in both dtypes (the products are bfloat16 in both): more than dense bfloat16's 2-3.
    assert differ <= 5


@pytest.fixture(scope="module")
async def lowbit_app(lowbit_model: LanguageModel, loaded_models: LoadedModels) -> AsyncIterator[FastAPI]:
    app_settings = Settings(dtype="bfloat16", weights="gguf")
    models = LoadedModels(language=lowbit_model, digits=loaded_models.digits)
    application = create_app(app_settings, models=models)
    async with application.router.lifespan_context(application):
        yield application


async def test_greedy_generate_over_the_app(lowbit_app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=lowbit_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as client:
        response = await client.post("/generate", json={"prompt": "The capital of France is", "max_new_tokens": 8})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert body["text"].startswith(" Paris")
        assert body["usage"]["completion_tokens"] == 8
        info = (await client.get("/info")).json()
    assert info["language_model"]["weights"] == "gguf"
    assert info["settings"]["weights"] == "gguf"
