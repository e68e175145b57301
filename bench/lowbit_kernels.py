"""The embedded model's matrix products by kernel and rows per call: which one the low-bit path should use.

    .venv/bin/python bench/lowbit_kernels.py [--rows 1,2,4,8,16,64] [--threads 1] [--record]

Shapes and weights are the embedded SmolLM2-135M's, from its GGUF file: all 30 layers' products (fused
q/k/v and gate/up, as the lean decoder runs them), one after another as a decode step runs them, so the
weights come from memory and not from the cache (one layer called over and over stays in L2/L3 and
flatters every kernel), then the tied output head. Kernels:
  - onednn-bf16 / onednn-f32: today's lean-decoder `Linear` over the de-quantized weights (oneDNN-packed);
  - int4-bf16 / int4-f32: `aten._weight_int4pack_mm_for_cpu` over the Q4_1 weights, activations (and
    scales) in bfloat16 or float32 (float32 only up to 2 rows: it is an order of magnitude slower);
  - int8-bf16: `aten._weight_int8pack_mm`, one scale per row (the output head's candidate).
Prints ms per step (the fastest of several: the machine is shared), one Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from service.language.llama_decoder import Linear, _oneDNN_available
from service.language.loading import embedded_gguf_path
from service.language.lowbit import GgufWeights, Int4Linear, Int8Linear, Q4Rows, hf_rows, q4_1_blocks

Product = Callable[[torch.Tensor], torch.Tensor]


def best_ms(fn: Callable[[], object], budget_s: float = 1.0) -> float:
    """The fastest call in the budget (at least 3): on a shared machine the median mostly measures the others."""
    fn()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline or len(times) < 3:
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="1,2,4,8,16,64")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows_list = [int(r) for r in args.rows.split(",")]
    g = GgufWeights(embedded_gguf_path())
    heads, kv_heads = int(g.field("llama.attention.head_count")), int(g.field("llama.attention.head_count_kv"))
    layers = int(g.field("llama.block_count"))

    def q4(name: str, heads: int | None = None) -> Q4Rows:
        rows = Q4Rows(*q4_1_blocks(g.raw(name)))
        return rows.take(hf_rows(rows.q.shape[0], heads)) if heads else rows

    def layer(i: int) -> list[Q4Rows]:
        b = f"blk.{i}."
        return [
            Q4Rows.cat([q4(b + "attn_q.weight", heads), q4(b + "attn_k.weight", kv_heads), q4(b + "attn_v.weight")]),
            q4(b + "attn_output.weight"),
            Q4Rows.cat([q4(b + "ffn_gate.weight"), q4(b + "ffn_up.weight")]),
            q4(b + "ffn_down.weight"),
        ]

    pack = _oneDNN_available()
    build: dict[str, Callable[[Q4Rows], Product]] = {
        "onednn-bf16": lambda r: Linear(r.dequantized().bfloat16(), pack),
        "onednn-f32": lambda r: Linear(r.dequantized(), pack),
        "int4-bf16": lambda r: Int4Linear(r, torch.bfloat16),
        "int4-f32": lambda r: Int4Linear(r, torch.float32),
        "int8-bf16": lambda r: Int8Linear(r.dequantized(), torch.bfloat16),
    }
    all_rows = [layer(i) for i in range(layers)]
    step: dict[tuple[str, int], float] = {}
    with torch.inference_mode():
        for kernel, make in build.items():
            products = [[make(r) for r in rows] for rows in all_rows]
            dtype = torch.bfloat16 if kernel.endswith("bf16") else torch.float32
            for n in rows_list:
                if kernel == "int4-f32" and n > 2:
                    continue
                x, wide = torch.randn(n, 576).to(dtype), torch.randn(n, 1536).to(dtype)

                def run(
                    products: list[list[Product]] = products, x: torch.Tensor = x, wide: torch.Tensor = wide
                ) -> None:
                    for qkv, o, gate_up, down in products:
                        qkv(x), o(x), gate_up(x), down(wide)

                step[kernel, n] = best_ms(run)
            del products
        head = g.dequantized("token_embd.weight")
        heads_by_kernel: dict[str, Product] = {
            "onednn-bf16": Linear(head.bfloat16(), pack),
            "onednn-f32": Linear(head, pack),
            "int8-bf16": Int8Linear(head, torch.bfloat16),
        }
        head_ms: dict[tuple[str, int], float] = {}
        for kernel, fn in heads_by_kernel.items():
            dtype = torch.bfloat16 if kernel.endswith("bf16") else torch.float32
            for n in rows_list:
                x = torch.randn(n, 576).to(dtype)
                head_ms[kernel, n] = best_ms(functools.partial(fn, x))
    kernels = list(build)
    lines = [
        f"lowbit kernels ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}): "
        f"ms, fastest of several on a shared machine",
        "",
        f"The {layers} layers' products (q/k/v, o, gate/up, down), one step:",
        "",
        "| rows | " + " | ".join(kernels) + " |",
        "|---:|" + "---:|" * len(kernels),
    ]
    for n in rows_list:
        cells = [f"{step[k, n]:.2f}" if (k, n) in step else "—" for k in kernels]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "The output head (49152×576):", "", "| rows | " + " | ".join(heads_by_kernel) + " |"]
    lines.append("|---:|" + "---:|" * len(heads_by_kernel))
    for n in rows_list:
        lines.append(f"| {n} | " + " | ".join(f"{head_ms[k, n]:.2f}" for k in heads_by_kernel) + " |")
    table = "\n".join(lines)
    print(table)
    if args.record:
        with (Path(__file__).parent / "RESULTS.md").open("a") as results:
            results.write("\n" + table + "\n")


if __name__ == "__main__":
    main()
