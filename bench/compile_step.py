"""Does `torch.compile` (inductor, CPU) make the lean decoder's decode step faster? One step at batch 1 of the
embedded model as `make serve` runs it (GENAI_WEIGHTS / GENAI_DTYPE auto), eager against compiled.

    .venv/bin/python bench/compile_step.py [--batch 1] [--length 40] [--threads 1]

The oneDNN-packed products (`mkldnn._linear_pointwise`, the output head here) do not lower in inductor
(a LoweringException), so they run eagerly, outside the compiled graph (`torch.compiler.disable`); the
int4 products stay in the graph. Shapes are static (`dynamic=False`): the step is timed at one cache
length. Prints ms per step (the fastest of three rounds) and the first call's compile time.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from service.config import Settings
from service.language.llama_decoder import Linear, LlamaDecoder
from service.language.loading import load_language_model


def best_ms(step: Callable[[], object], calls: int = 40) -> float:
    with torch.inference_mode():
        for _ in range(3):
            step()
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(calls):
                step()
            best = min(best, (time.perf_counter() - started) / calls)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=40, help="tokens in each row's cache before the step")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    Linear.__call__ = torch.compiler.disable(Linear.__call__)  # type: ignore[method-assign,no-untyped-call]  # see the docstring
    settings = Settings()
    lm = load_language_model(settings.lm_model, cache_dir=settings.cache_dir)
    decoder = LlamaDecoder.shared(lm)
    n, length = args.batch, args.length
    cache = decoder.new_cache(n, length + 64)
    with torch.inference_mode():
        prompt = torch.randint(0, 1000, (n, length))
        decoder.forward(prompt, torch.arange(length).expand(n, length), cache, torch.full((n,), length - 1))
    token, position = torch.randint(0, 1000, (n, 1)), torch.full((n, 1), length)
    eager = best_ms(lambda: decoder.forward(token, position, cache, None))
    compiled_forward = torch.compile(decoder.forward, dynamic=False)
    started = time.perf_counter()
    with torch.inference_mode():
        compiled_forward(token, position, cache, None)
    compile_s = time.perf_counter() - started
    compiled = best_ms(lambda: compiled_forward(token, position, cache, None))
    eager_again = best_ms(lambda: decoder.forward(token, position, cache, None))
    print(
        f"decode step, batch {n}, cache {length}, {lm.describe()['weights']} weights, {lm.dtype}, {args.threads} thread(s)\n\n"
        "| eager (ms) | compiled (ms) | eager again (ms) | first compiled call (s) |\n|---|---|---|---|\n"
        f"| {eager:.2f} | {compiled:.2f} | {eager_again:.2f} | {compile_s:.1f} |"
    )


if __name__ == "__main__":
    main()
