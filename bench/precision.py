"""float32 against bfloat16, and the GGUF file's own low-bit weights (GENAI_WEIGHTS=gguf) against the
de-quantized ones, on this machine: fidelity of the next-token distribution, greedy agreement batched vs
alone, and decode speed.

    .venv/bin/python bench/precision.py [--device cpu|cuda] [--tokens 32] [--llama-tokens 64] [--record]

Prints one Markdown table (and appends it to bench/RESULTS.md with --record).
Fidelity: over a fixed prompt set, how often each path's most likely next token is float32's, and the
largest absolute difference of any next-token probability. Batched vs alone: how many of the prompts'
greedy continuations (N tokens) differ when the 8 run in one batch instead of one by one. Against
llama.cpp: each prompt's greedy continuation (--llama-tokens, alone) against llama-server's on the same
GGUF file and the same prompt token ids (bench/build_llama_server.sh builds it; LLAMA_SERVER=another
binary): how many are identical, and the median position of the first difference among the others;
and, teacher-forced along llama.cpp's continuations, how often each path's top-1 is llama.cpp's token.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

import torch

from service.config import Settings
from service.language.engine import GenerationEngine, engine_threads
from service.language.llama_decoder import LlamaDecoder
from service.language.loading import embedded_gguf_path, load_language_model
from service.language.model import LanguageModel
from service.language.sampling import SamplingParams

PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "Hello, my name is",
    "The quick brown fox jumps over",
    "In 1492, Columbus",
    "Water boils at",
    "The best way to learn is",
    "My favourite colour is",
    "import numpy as",
    "The sun rises in the",
    "Two plus two equals",
    "Dear Sir or Madam,",
    "The largest planet in our solar system is",
    "To be or not to be,",
    "Photosynthesis is the process by which",
    "The Eiffel Tower is located in",
    "Monday, Tuesday,",
    "A haiku about autumn:",
    "The chemical symbol for gold is",
    "SELECT * FROM",
    "Paris is the capital of",
    "The meaning of life is",
    "She opened the door and saw",
    "Machine learning is",
    "The first man on the moon was",
    "for i in range(",
    "Roses are red, violets are",
    "The opposite of hot is",
    "Shakespeare wrote",
    "An apple a day",
    "The speed of light is",
]


async def next_token_probs(engine: GenerationEngine, lm: LanguageModel, prompt: str) -> torch.Tensor:
    """By the forward pass the engine serves with (the lean decoder for this model), one prompt alone."""
    logits = await engine.next_token_logits([lm.encode(prompt)])
    return torch.softmax(logits[0, : lm.vocab_size], dim=-1).cpu()


async def greedy(
    engine: GenerationEngine, lm: LanguageModel, prompts: list[str], tokens: int, together: bool
) -> tuple[list[list[int]], float]:
    params = SamplingParams(max_new_tokens=tokens, ignore_eos=True)
    started = time.perf_counter()
    if together:
        handles = [engine.submit(lm.encode(p), params) for p in prompts]
        results = [(await h.result())[1].ids for h in handles]
    else:
        results = [(await engine.submit(lm.encode(p), params).result())[1].ids for p in prompts]
    return results, len(prompts) * tokens / (time.perf_counter() - started)


LLAMA_SERVER = Path(__file__).resolve().parents[1] / ".cache" / "llama.cpp" / "build" / "bin" / "llama-server"


def llama_greedy(prompts: list[list[int]], tokens: int) -> list[list[int]] | None:
    """llama-server's greedy continuation of each prompt (token ids in, ids out; one slot, no prompt cache),
    or None without a llama-server binary."""
    binary = Path(os.environ.get("LLAMA_SERVER", LLAMA_SERVER))
    if not os.access(binary, os.X_OK):
        print(f"no llama-server at {binary} (bench/build_llama_server.sh builds it): no llama.cpp column")
        return None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(binary), "-m", str(embedded_gguf_path()), "-np", "1", "-t", "2", "--host", "127.0.0.1"]
    server = subprocess.Popen([*command, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("llama-server did not start") from None
                time.sleep(0.5)
        continuations = []
        for ids in prompts:
            body = {"prompt": ids, "n_predict": tokens, "ignore_eos": True, "temperature": 0}
            body |= {"cache_prompt": False, "return_tokens": True}
            request = urllib.request.Request(
                url + "/completion", json.dumps(body).encode(), {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=300) as answer:
                continuations.append([int(t) for t in json.loads(answer.read())["tokens"]])
        return continuations
    finally:
        server.terminate()
        server.wait(30)


def against_llama(ours: list[list[int]], theirs: list[list[int]] | None) -> str:
    """`identical/total (first difference: median k)`, k 0-based, over the continuations that differ."""
    if theirs is None:
        return "-"
    firsts = [
        next(i for i, (a, b) in enumerate(zip(x, y, strict=False)) if a != b)
        for x, y in zip(ours, theirs, strict=True)
        if x != y
    ]
    where = f" (first difference: median token {statistics.median(firsts):.0f})" if firsts else ""
    return f"{len(ours) - len(firsts)}/{len(ours)}{where}"


async def follows_llama(engine: GenerationEngine, prompts: list[list[int]], theirs: list[list[int]] | None) -> str:
    """Teacher-forced: along llama-server's own continuations, how often this path's most likely next token
    is the one llama.cpp chose (a divergence no longer hides every later position)."""
    if theirs is None:
        return "-"
    same = total = 0
    for prompt, continuation in zip(prompts, theirs, strict=True):
        scored = await engine.prompt_logprobs(prompt + continuation, 1)  # entry j: token j + 1 given those before
        predicted = [top[0].id for _, top in scored[len(prompt) - 1 :]]
        same += sum(int(p == t) for p, t in zip(predicted, continuation, strict=True))
        total += len(continuation)
    return f"{same}/{total} ({same / total:.1%})"


def describe_path(decoder: LlamaDecoder) -> str:
    """What ran: the weights, and whether the layers ran compiled (a compile that failed runs eagerly)."""
    return decoder.weights + (", compiled" if decoder.compiled is not None else "")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--llama-tokens", type=int, default=64, help="greedy tokens compared with llama-server")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()
    settings = Settings()
    torch.set_num_threads(1)  # only the engine thread runs torch in parallel (see GenerationEngine.start)
    paths = [
        ("float32", "dense", False),
        ("bfloat16", "dense", False),
        ("float32", "gguf", False),
        ("float32", "gguf", True),
        ("bfloat16", "gguf", False),
    ]
    models = {
        f"{dtype}, {weights}{', compiled' if compiled else ''}": load_language_model(
            settings.lm_model,
            device=args.device,
            dtype=dtype,
            cache_dir=settings.cache_dir,
            weights=weights,
            compiled_step=engine_threads(settings) if compiled else 0,
        )
        for dtype, weights, compiled in paths
    }
    any_lm = next(iter(models.values()))
    llama = llama_greedy([any_lm.encode(p) for p in PROMPTS], args.llama_tokens)
    reference: dict[str, torch.Tensor] = {}
    rows = []
    for path, lm in models.items():
        engine = GenerationEngine(lm, settings)
        engine.start()
        agree, worst = 0, 0.0
        for prompt in PROMPTS:
            probs = await next_token_probs(engine, lm, prompt)
            reference.setdefault(prompt, probs)  # float32 dense comes first
            agree += int(probs.argmax() == reference[prompt].argmax())
            worst = max(worst, float((probs - reference[prompt]).abs().max()))
        await greedy(engine, lm, PROMPTS[:2], 4, together=True)  # warm-up
        alone, rate1 = await greedy(engine, lm, PROMPTS[:8], args.tokens, together=False)
        batched, rate8 = await greedy(engine, lm, PROMPTS[:8], args.tokens, together=True)
        longer = (await greedy(engine, lm, PROMPTS, args.llama_tokens, together=False))[0] if llama else []
        followed = await follows_llama(engine, [lm.encode(p) for p in PROMPTS], llama)
        engine.shutdown()
        differ = sum(a != b for a, b in zip(alone, batched, strict=True))
        rows.append(
            f"| {path} ({describe_path(LlamaDecoder.shared(lm))}) | {agree}/{len(PROMPTS)} | {worst:.4f} | {differ}/8 | {against_llama(longer, llama)} | {followed} | {rate1:.1f} | {rate8:.1f} |"
        )
    table = "\n".join(
        [
            f"precision ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
            f"device {args.device}, torch {torch.__version__}, engine forward {engine.describe()['forward']})",
            "",
            f"| dtype, weights asked (run) | top-1 = float32's | max |Δp| vs float32 | greedy batched ≠ alone | greedy = llama.cpp's ({args.llama_tokens} tokens) | top-1 = llama.cpp's along its continuations | tok/s alone (batch 1) | tok/s 8 together |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if args.record:
        with (Path(__file__).parent / "RESULTS.md").open("a") as results:
            results.write("\n" + table + "\n")


if __name__ == "__main__":
    asyncio.run(main())
