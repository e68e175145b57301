"""The compiled decoder layer (GENAI_COMPILED_STEP=on, service/language/compiled_layer.py) against the eager
one: decode-step time by batch size, a prefill, and where a batch-1 step's time goes in each.

    .venv/bin/python bench/compile_step.py [--batches 1 8 32] [--length 100] [--rounds 3] [--record]

The embedded model under its GGUF weights in float32 (the default path), the engine's thread count
(GENAI_TORCH_THREADS or the CPUs). Each round times the eager and the compiled step back to back (40 steps
each, after 5 of warm-up, at a cache of --length tokens), so the machine's drift falls on both; the table
gives the median of the rounds and their ratio. The profiles (torch.profiler, 10 steps at batch 1) list the
operators by their own time: the compiled layer's fused loops do not appear as operators, so its rows
are what it still calls out to (the int4 products) and the step's parts outside the layers.

(This script first timed `torch.compile` of the whole step, 2026-12-03 09:37 in RESULTS.md: no gain, the
oneDNN head does not lower and the step broke into several graphs.)
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import profile

from service.config import Settings
from service.language.engine import engine_threads
from service.language.llama_decoder import LlamaDecoder
from service.language.loading import load_language_model


def ms_per_call(step: Callable[[], object], calls: int = 40) -> float:
    for _ in range(5):
        step()
    started = time.perf_counter()
    for _ in range(calls):
        step()
    return (time.perf_counter() - started) / calls * 1000


def profile_table(step: Callable[[], object], rows: int = 8) -> str:
    with profile() as prof:
        for _ in range(10):
            step()
    averages = prof.key_averages()
    total = sum(event.self_cpu_time_total for event in averages)
    top = sorted(averages, key=lambda event: event.self_cpu_time_total, reverse=True)[:rows]
    lines = ["| operator | calls a step | ms a step (own time) | share |", "|---|---|---|---|"]
    for event in top:
        lines.append(
            f"| {event.key} | {event.count // 10} | {event.self_cpu_time_total / 10 / 1000:.2f} | "
            f"{event.self_cpu_time_total / total:.0%} |"
        )
    lines.append(f"| (all operators) | | {total / 10 / 1000:.2f} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--length", type=int, default=100, help="tokens in each row's cache before the steps")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="append the tables to bench/RESULTS.md")
    args = parser.parse_args()
    settings = Settings()
    threads = engine_threads(settings)
    torch.set_num_threads(threads)
    started = time.perf_counter()
    lm = load_language_model(settings.lm_model, cache_dir=settings.cache_dir, weights="gguf", compiled_step=threads)
    load_s = time.perf_counter() - started
    decoder = LlamaDecoder.shared(lm)
    compiled = decoder.compiled
    if compiled is None:
        raise SystemExit("the compiled layer is unavailable here (see the log above)")

    def timed(step: Callable[[], object], calls: int = 40) -> tuple[float, float]:
        eager, fused = [], []
        for _ in range(args.rounds):
            decoder.compiled = None
            eager.append(ms_per_call(step, calls))
            decoder.compiled = compiled
            fused.append(ms_per_call(step, calls))
        return statistics.median(eager), statistics.median(fused)

    rows = ["| step | eager (ms) | compiled (ms) | eager / compiled |", "|---|---|---|---|"]
    profiles: dict[str, str] = {}
    with torch.inference_mode():
        for n in args.batches:
            cache = decoder.new_cache(n, args.length + 64)
            prompt = torch.randint(0, 1000, (n, args.length))
            positions = torch.arange(args.length)[None].expand(n, args.length)
            decoder.forward(prompt, positions, cache, torch.full((n,), args.length - 1))
            token, position, last = (
                torch.randint(0, 1000, (n, 1)),
                torch.full((n, 1), args.length),
                torch.zeros(n).long(),
            )

            def decode(
                token: torch.Tensor = token,
                position: torch.Tensor = position,
                cache: torch.Tensor = cache,
                last: torch.Tensor = last,
            ) -> None:
                decoder.forward(token, position, cache, last)

            eager, fused = timed(decode)
            rows.append(f"| decode, batch {n} | {eager:.2f} | {fused:.2f} | {eager / fused:.2f}× |")
            if n == 1:
                decoder.compiled = None
                profiles["eager"] = profile_table(decode)
                decoder.compiled = compiled
                profiles["compiled"] = profile_table(decode)
        prefill_ids = torch.randint(0, 1000, (8, 30))
        prefill_cache = decoder.new_cache(8, 64)
        prefill_positions = torch.arange(30)[None].expand(8, 30)

        def prefill() -> None:
            decoder.forward(prefill_ids, prefill_positions, prefill_cache, torch.full((8,), 29))

        eager, fused = timed(prefill, calls=6)
        rows.append(f"| prefill, 8 prompts of 30 tokens | {eager:.2f} | {fused:.2f} | {eager / fused:.2f}× |")
    now = datetime.datetime.now(datetime.timezone.utc)
    report = "\n".join(
        [
            f"## {now:%Y-%m-%d %H:%M} UTC — the compiled decoder layer against the eager one (bench/compile_step.py)",
            "",
            f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {threads} thread(s), "
            f"{lm.describe()['weights']} weights, {lm.dtype}, cache of {args.length} tokens, median of "
            f"{args.rounds} alternated rounds; model loaded (compiled layer included) in {load_s:.1f} s.",
            "",
            *rows,
            "",
            "Where a batch-1 decode step's time goes, eager:",
            "",
            profiles.get("eager", "(batch 1 not run)"),
            "",
            "and compiled (the fused loops are not operators: they are the step's time less these rows):",
            "",
            profiles.get("compiled", "(batch 1 not run)"),
        ]
    )
    print(report)
    if args.record:
        with (Path(__file__).parent / "RESULTS.md").open("a") as results:
            results.write("\n" + report + "\n")


if __name__ == "__main__":
    main()
