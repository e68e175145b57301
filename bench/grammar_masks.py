"""Structured output's cost: which grammar library computes token masks fastest on this CPU, and what a
JSON-schema constraint adds to a decode step of the engine.

    .venv/bin/python bench/grammar_masks.py libraries   # mask time per step per library (those installed)
    .venv/bin/python bench/grammar_masks.py engine      # engine step time with and without a constraint
    .venv/bin/python bench/grammar_masks.py engine --save   # either: ... and append its table to bench/RESULTS.md

`libraries` compiles one nested JSON schema (objects, arrays, enums, numbers, a pattern, required fields)
for the embedded SmolLM2 tokenizer (49,152 tokens) with each of llguidance, xgrammar and outlines-core
(the ones importable: the service installs llguidance; to compare, put the other two in a scratch venv
that also sees the project's packages, e.g. through a .pth file), then walks the tokens of a document
that satisfies it: at each step the library writes the next-token bitmask (timed), then takes the token.
It prints the compile time and the mask time per step (the mean of a first, cold walk; median, p95, max
and mean over 5 walks after it), what each requires, and which features each compiles (regex, choice,
JSON-schema keywords). `engine` runs the engine with no HTTP, greedy, prompt lookup off, at batch 1 and
8: the mean decode-step time while every row is unconstrained, and while every row is under the same
schema (through service/language/grammar.py, as /generate's `json_schema` runs it).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from grammar_libraries import LLGuidance, OutlinesCore, XGrammar
from machine import git_commit, machine_info

RESULTS = ROOT / "bench" / "RESULTS.md"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "role": {"enum": ["admin", "user", "guest"]},
        "scores": {"type": "array", "items": {"type": "number"}, "maxItems": 5},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "tags": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"key": {"type": "string", "maxLength": 20}, "weight": {"type": "number"}},
                "required": ["key"],
                "additionalProperties": False,
            },
            "maxItems": 4,
        },
    },
    "required": ["name", "age", "role", "address"],
    "additionalProperties": False,
}
DOCUMENT = {
    "name": "Ada Lovelace",
    "age": 36,
    "role": "admin",
    "scores": [9.5, 7, 8.25],
    "address": {"city": "London", "zip": "12345"},
    "tags": [{"key": "math", "weight": 1.0}, {"key": "poetry"}],
}
FEATURES: dict[str, dict[str, Any]] = {
    "enum + const": {"type": "object", "properties": {"a": {"enum": [1, "x"]}, "b": {"const": 3}}},
    "anyOf": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
    "$ref / $defs (recursive)": {
        "$defs": {
            "node": {"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}}}
        },
        "$ref": "#/$defs/node",
    },
    "pattern": {"type": "string", "pattern": "^[A-Z][a-z]+$"},
    "format: date-time": {"type": "string", "format": "date-time"},
    "minItems / maxItems": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 3},
    "minimum / maximum": {"type": "integer", "minimum": 3, "maximum": 17},
    "type list (nullable)": {"type": ["string", "null"]},
}
REGEX = r"[A-Z]{2}-\d{3,4}"
CHOICES = ["red", "green", "blue"]
BAD_REGEX = "(unclosed"


def load_tokenizer() -> Any:
    from service.config import Settings

    folders = sorted((Settings().cache_dir / "converted").glob("SmolLM2-135M-Instruct*/tokenizer.json"))
    if not folders:
        raise SystemExit("no provisioned SmolLM2 tokenizer: run `.venv/bin/python -m service provision` first")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folders[-1].parent)


def _requirements(distribution: str) -> str:
    """What installing the library pulls in (its wheel's non-optional requirements)."""
    from importlib import metadata

    needs = [
        r.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip() for r in metadata.requires(distribution) or []
    ]
    kept = [r for r, spec in zip(needs, metadata.requires(distribution) or [], strict=True) if "extra ==" not in spec]
    return ", ".join(kept) or "nothing"


def _try(fn: Callable[[], Any]) -> tuple[Any, str]:
    try:
        return fn(), "yes"
    except Exception as exc:  # a library's refusal, reported in the table
        return None, f"no ({type(exc).__name__}: {str(exc).splitlines()[0][:60]})"


def libraries() -> list[str]:
    tokenizer = load_tokenizer()
    vocab = min(len(tokenizer), 49152)
    text = json.dumps(DOCUMENT)
    tokens = tokenizer.encode(text, add_special_tokens=False)
    lines = [
        f"Tokenizer: SmolLM2's, {vocab} tokens. Document walked: {len(text)} characters, {len(tokens)} tokens.",
        "",
    ]
    rows, features = [], []
    for cls in (LLGuidance, XGrammar, OutlinesCore):
        started = time.perf_counter()
        try:
            library = cls(tokenizer, vocab)
        except ImportError:
            lines.append(f"- {cls.name}: not installed, skipped")
            continue
        setup = time.perf_counter() - started
        started = time.perf_counter()
        compiled, ok = _try(functools.partial(library.json_schema, SCHEMA))
        compile_s = time.perf_counter() - started
        if compiled is None:
            rows.append(f"| {cls.name} | {setup:.2f} | {ok} | | | | | | |")
            continue
        cold = library.walk(compiled, tokens)  # the first walk after compiling: lazily built state included
        ms = sorted(t * 1000 for _ in range(5) for t in library.walk(compiled, tokens))
        rows.append(
            f"| {cls.name} | {setup:.2f} | {compile_s * 1000:.0f} | {statistics.fmean(cold) * 1000:.3f} | "
            f"{statistics.median(ms):.3f} | {ms[int(0.95 * (len(ms) - 1))]:.3f} | {ms[-1]:.3f} | "
            f"{statistics.fmean(ms):.3f} | {_requirements(cls.name)} |"
        )
        cells = [_try(functools.partial(library.json_schema, schema))[1] for schema in FEATURES.values()]
        cells.append(_try(functools.partial(library.regex, REGEX))[1])
        cells.append(_try(functools.partial(library.choice, CHOICES))[1])
        bad = _try(functools.partial(library.regex, BAD_REGEX))[1]
        cells.append("refused" if bad.startswith("no") else "accepted (!)")
        features.append(f"| {cls.name} | " + " | ".join(cells) + " |")
    names = [*FEATURES, f"regex `{REGEX}`", f"choice {CHOICES}", f"bad regex `{BAD_REGEX}`"]
    header = (
        "| library | tokenizer setup (s) | compile (ms) | first walk: mask mean (ms) | mask p50 (ms) | mask p95 (ms) "
        "| mask max (ms) | mask mean (ms) | requires |"
    )
    return [
        *lines,
        header,
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "| library | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        *features,
    ]


def _model_loader() -> Any:
    """`load_language_model`, wherever this checkout keeps it (loading.py, or model.py before that split)."""
    import importlib
    import importlib.util

    for module in ("service.language.loading", "service.language.model"):
        if importlib.util.find_spec(module) is not None:
            loader = getattr(importlib.import_module(module), "load_language_model", None)
            if loader is not None:
                return loader
    raise SystemExit("no load_language_model in service.language")


ROUNDS = 4  # alternated constrained/unconstrained pairs per batch size


async def _alternated_steps(
    engine: Any, prompt: list[int], constraint: Any, grammar: Any, batch: int, tokens: int
) -> tuple[dict[bool, list[float]], list[Any]]:
    """Step times (s) of `batch` rows constrained (True) and not (False): a warm-up of each, then ROUNDS
    alternated pairs (this machine's speed drifts within seconds). The unconstrained rows generate as
    many tokens as the constrained ones did, so both sides' steps run over the same cache lengths."""
    from service.language.sampling import SamplingParams

    steps: dict[bool, list[float]] = {True: [], False: []}
    recording: list[bool] = []  # the side being recorded, when one is

    def listener(size: int, seconds: float) -> None:
        if size == batch and recording:  # steps with every row running
            steps[recording[0]].append(seconds)

    async def run(constrained: bool, length: int) -> list[Any]:
        params = SamplingParams(
            max_new_tokens=length, ignore_eos=not constrained, constraint=constraint if constrained else None
        )
        handles = [engine.submit(prompt, params, grammar if constrained else None) for _ in range(batch)]
        return [(await h.result())[1] for h in handles]

    engine.step_listeners.append(listener)
    try:
        finishes = await run(True, tokens)
        length = min(f.completion_tokens for f in finishes)
        await run(False, length)
        for _ in range(ROUNDS):
            for constrained in (True, False):
                recording[:] = [constrained]
                await run(constrained, length)
                recording.clear()
    finally:
        engine.step_listeners.pop()
    return steps, finishes


async def engine_steps(batches: list[int], tokens: int) -> list[str]:
    import torch

    from service.config import Settings
    from service.language.engine import GenerationEngine
    from service.language.grammar import Constraint

    settings = Settings()
    torch.set_num_threads(1)  # only the engine thread runs torch in parallel (see GenerationEngine.start)
    lm = _model_loader()(settings.lm_model, dtype=settings.dtype, cache_dir=settings.cache_dir)
    engine = GenerationEngine(
        lm,
        settings.model_copy(
            update={"max_batch_size": max(batches), "max_running_requests": max(batches), "prompt_lookup_tokens": 0}
        ),
    )
    engine.start()
    constraint = Constraint("json_schema", json.dumps(SCHEMA), "json_schema")
    started = time.perf_counter()
    grammar = await engine.grammars.compile(constraint)
    compile_s = time.perf_counter() - started
    prompt = lm.encode("A JSON record of a person:\n")
    rows = []
    for batch in batches:
        steps, finishes = await _alternated_steps(engine, prompt, constraint, grammar, batch, tokens)
        constrained_ms, plain = (statistics.median(steps[c]) * 1000 for c in (True, False))
        lengths = sorted(f.completion_tokens for f in finishes)
        rows.append(
            f"| {batch} | {plain:.2f} ({len(steps[False])}) | {constrained_ms:.2f} ({len(steps[True])}) | "
            f"{constrained_ms - plain:+.2f} ({(constrained_ms / plain - 1) * 100:+.0f}%) | "
            f"{(constrained_ms - plain) / batch:+.2f} | {lengths[0]}–{lengths[-1]} |"
        )
    engine.shutdown()
    header = [
        f"Grammar: llguidance, the nested schema of bench/grammar_masks.py, compiled in {compile_s * 1000:.0f} ms "
        f"(first compile: the tokenizer's setup included). dtype {settings.dtype}, greedy, prompt lookup off; "
        f"step times: the median over {ROUNDS} alternated constrained and unconstrained runs after a warm-up of each.",
        "",
        "| batch | step ms, no constraint (steps) | step ms, every row constrained (steps) | added per step | added per row "
        "and step (ms) | constrained lengths (tokens) |",
        "|---|---|---|---|---|---|",
    ]
    return header + rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["libraries", "engine"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--save", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()
    started = time.time()
    if args.what == "libraries":
        title, lines = "structured output: token-mask time per grammar library", libraries()
    else:
        title = "the cost of a JSON-schema constraint per decode step"
        lines = asyncio.run(engine_steps(args.batches, args.tokens))
    print("\n".join(lines))
    if args.save:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        with RESULTS.open("a") as results:
            results.write(
                f"\n\n## {stamp} — {title}\n\n"
                f"Commit {git_commit()}. Machine: {machine_info()}. Command: `bench/grammar_masks.py {args.what}`. "
                f"Took {(time.time() - started) / 60:.1f} min.\n\n" + "\n".join(lines) + "\n"
            )


if __name__ == "__main__":
    main()
