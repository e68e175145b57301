"""What `explain` costs a generation: W1 and W2 with it off and on, greedy and sampled, on one server.

    .venv/bin/python bench/explain_cost.py            # appends its table to bench/RESULTS.md
    .venv/bin/python bench/explain_cost.py --quick    # smoke run, printed only

One service process (settings from the GENAI_* environment, as bench/run.py starts it) answers four
request shapes in turn, each through the same load generator as bench/run.py's W1 and W2:
  greedy          the W1/W2 body as bench/run.py sends it (explain off: the path every client takes)
  greedy+explain  the same with "explain": true (every token event carries its entropy, surprisal,
                  margin, the sampler's stages and the draw)
  top-p           do_sample, temperature 0.8, top_p 0.95, a fixed seed per request
  top-p+explain   the same with "explain": true (the stages then include temperature and top_p)
The ratio column divides each explained shape's figure by its unexplained twin's, measured minutes
apart in one run; the target is that explain costs at most 1.3x (tokens/s ratio >= 0.77).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import loadgen
from machine import git_commit, machine_info
from run import RESULTS, SERVERS, RunningServer, log

SAMPLED = {"do_sample": True, "temperature": 0.8, "top_p": 0.95, "seed": 7}
SHAPES: dict[str, dict[str, Any]] = {
    "greedy": {},
    "greedy+explain": {"explain": True},
    "top-p": SAMPLED,
    "top-p+explain": {**SAMPLED, "explain": True},
}
TWINS = {"greedy+explain": "greedy", "top-p+explain": "top-p"}


def adapter_for(extra: dict[str, Any]) -> loadgen.Adapter:
    """The service's adapter with `extra` merged into every generation body."""
    base = loadgen.GENAI.generate_body
    return replace(loadgen.GENAI, generate_body=lambda prompt, n, stream: {**base(prompt, n, stream), **extra})


def measure(base_url: str, plan: loadgen.Plan) -> dict[str, dict[str, Any]]:
    figures: dict[str, dict[str, Any]] = {}
    for shape, extra in SHAPES.items():
        adapter = adapter_for(extra)
        log(f"{shape}: W1 …")
        w1 = asyncio.run(loadgen.w1(base_url, adapter, {}, runs=plan.w1_runs, tokens=plan.w1_tokens))
        log(f"{shape}: W2 …")
        w2 = asyncio.run(
            loadgen.w2(base_url, adapter, {}, seconds=plan.w2_seconds, clients=plan.clients, tokens=plan.w2_tokens)
        )
        figures[shape] = {**w1, **w2}
        log(f"{shape}: W1 {w1['w1_tps']:.1f} tokens/s, W2 {w2['w2_tps']:.1f} tokens/s")
        time.sleep(2)
    return figures


def render(figures: dict[str, dict[str, Any]], plan: loadgen.Plan) -> str:
    lines = [
        f"| Shape | W1 tokens/s (1 client, {plan.w1_tokens} tokens) | ratio | "
        f"W2 tokens/s ({plan.clients} clients, {plan.w2_tokens} tokens) | ratio | W2 p95 (s) | W2 TTFT p50 (s) | "
        "W2 requests (failed) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for shape, f in figures.items():
        twin = figures.get(TWINS.get(shape, ""))
        w1_ratio = f"{f['w1_tps'] / twin['w1_tps']:.2f}x" if twin else "—"
        w2_ratio = f"{f['w2_tps'] / twin['w2_tps']:.2f}x" if twin else "—"
        lines.append(
            f"| {shape} | {f['w1_tps']:.1f} | {w1_ratio} | {f['w2_tps']:.1f} | {w2_ratio} | {f['w2_p95']:.2f} | "
            f"{f['w2_ttft_p50']:.3f} | {f['w2_requests']} ({f['w2_failed']}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short durations, printed only")
    parser.add_argument("--w2-seconds", type=float, default=30.0)
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)
    plan = loadgen.Plan.quick() if args.quick else loadgen.Plan(w2_seconds=args.w2_seconds)
    started_at = datetime.now(UTC)
    server = RunningServer(SERVERS["service"], ready_timeout=900)
    try:
        figures = measure(server.base_url, plan)
    finally:
        server.stop()
    kind = "quick smoke run" if args.quick else "full run"
    report = "\n".join(
        [
            f"## {started_at:%Y-%m-%d %H:%M} UTC — the cost of `explain` ({kind})",
            "",
            f"Commit {git_commit()}. Machine: {machine_info()}. Command: `bench/explain_cost.py "
            f"{' '.join(argv if argv is not None else sys.argv[1:])}`. "
            f"Took {(datetime.now(UTC) - started_at).total_seconds() / 60:.1f} min.",
            "",
            render(figures, plan),
            "",
            "- Ratio: the explained shape over its unexplained twin in this run (target: explain costs at most "
            "1.3x, i.e. a tokens/s ratio of at least 0.77).",
            "",
        ]
    )
    print(report)
    if not args.quick and not args.no_save:
        with RESULTS.open("a") as out:
            out.write(report + "\n")
        log(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
