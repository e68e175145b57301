"""Load generator for the benchmark workloads W1–W5 (asyncio + httpx; wrk for W4).

Used by `bench/run.py`, which starts each server in turn; also usable alone against a server that
is already running on this machine:

    .venv/bin/python bench/loadgen.py --url http://127.0.0.1:8000 --api genai --workloads W1,W2 [--quick]

Workloads (defaults; `--quick` shortens them for smoke runs):
  W1  one client, "The capital of France is", 128 new tokens, greedy, ignore_eos, not streamed:
      tokens/s = completion tokens / request wall time, median of 5 runs (after one warm-up).
  W2  8 clients, each looping 64-token greedy ignore_eos generations over varied short prompts for
      45 s, plus a 9th client polling GET /health every 100 ms meanwhile. Aggregate tokens/s, p50/p95
      request latency, time to first token (TTFT), /health p99.
  W3  8 clients looping top-5 next-token probabilities for one ~30-token prompt for 30 s: req/s, p50/p95.
  W5  W2 with 32 clients (and no more than W2's duration): aggregate tokens/s, p50/p95, TTFT.
  W4  `wrk`, 8 connections, 20 s, POSTing 1 KB of English to the tokenize endpoint: req/s, p50/p99.
      Against the empty FastAPI app (bench/empty_app.py) the same POST goes to its empty route: the ceiling.

Closed loop, bounded in time and count: clients start no new request after the duration; requests
still running then are waited for (at most `grace` seconds, then cancelled and counted as
unfinished). Rates divide what completed by the time from start to the last completion, so a server
slower than the window (the naive loop) still gets a fair figure.

TTFT: where the server streams (the service's SSE `token` events, llama.cpp's `stream: true`) W2
streams and TTFT is measured by the client: request sent -> first token event received. Servers that
do not stream (the two Python baselines) are asked non-streamed and TTFT is what the server reports
(`timing.time_to_first_token_seconds`, measured inside the handler) — the table marks which is which.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

W1_PROMPT = "The capital of France is"

W2_PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "Hello, my name is",
    "The quick brown fox",
    "In 1492, Columbus",
    "Water boils at",
    "The best way to learn is",
    "My favourite recipe for soup",
    "The three laws of motion are",
    "Dear hiring manager,",
    "Photosynthesis is the process",
    "import numpy as np",
    "The weather today is",
    "A good night's sleep",
    "The first step in any project",
]

# 30 tokens with the SmolLM2 tokenizer (bench/run.py prints the count the service reports).
W3_PROMPT = (
    "The old lighthouse keeper climbed the narrow stairs every evening, lit the great lamp, "
    "and watched the ships pass safely along the dark and rocky coast of the"
)

_W4_SOURCE = (
    "Tokenization is the first thing a language model does with text. The tokenizer cuts the input "
    "into pieces that the model knows, called tokens, and replaces each piece by its number in a fixed "
    "vocabulary. Frequent words usually become a single token, while rare words, names and numbers are "
    "split into several smaller pieces. Spaces and punctuation are tokens too, or parts of them, which is "
    "why the same word can map to different tokens at the start of a sentence and in the middle of one. "
    "Counting tokens matters in practice: a model reads a limited number of them at once, services "
    "charge by them, and generation speed is measured in tokens per second. A fast tokenizer is "
    "therefore a small but real part of a fast inference service, because every request pays for it "
    "before the model runs and again when the answer is turned back into text. This paragraph is about "
    "one kilobyte of plain English, a typical size for a prompt sent to a small model running on a "
    "laptop or a modest server with two cores and no accelerator at all."
)
W4_TEXT = _W4_SOURCE[:1024]  # 205 tokens with the SmolLM2 tokenizer

REQUEST_TIMEOUT_S = 600.0
HEALTH_TIMEOUT_S = 10.0
MAX_REQUESTS = 200_000  # per workload: a hard bound whatever the server's speed


# --------------------------------------------------------------------------------------------
# Adapters: how each kind of server is asked for the same thing


@dataclass(frozen=True)
class Adapter:
    generate_path: str
    probs_path: str
    tokenize_path: str
    health_path: str
    streams: bool
    generate_body: Callable[[str, int, bool], dict[str, Any]]
    probs_body: Callable[[str, int], dict[str, Any]]
    tokenize_body: Callable[[str], dict[str, Any]]
    completion_tokens: Callable[[dict[str, Any]], int]  # from a non-streamed answer
    server_ttft: Callable[[dict[str, Any]], float | None]  # from a non-streamed answer
    probs_ok: Callable[[dict[str, Any]], bool]
    # One SSE event (name, parsed data) -> ("token" | "done" | "error" | None, completion tokens when "done").
    stream_event: Callable[[str, Any], tuple[str | None, int | None]]


def _genai_stream_event(name: str, data: Any) -> tuple[str | None, int | None]:
    if name == "token":
        return "token", None
    if name == "done":
        return "done", int(data["usage"]["completion_tokens"])
    if name == "error":
        return "error", None
    return None, None


def _llama_stream_event(name: str, data: Any) -> tuple[str | None, int | None]:
    if not isinstance(data, dict):
        return None, None
    if "error" in data:
        return "error", None
    if data.get("stop"):
        n = data.get("tokens_predicted") or (data.get("timings") or {}).get("predicted_n")
        return "done", int(n) if n is not None else None
    return "token", None


def _unsupported(*_: Any) -> Any:
    raise NotImplementedError


GENAI = Adapter(  # this service, and the baselines that copy its JSON shapes
    generate_path="/generate",
    probs_path="/next-token-probs",
    tokenize_path="/tokenize",
    health_path="/health",
    streams=True,
    generate_body=lambda prompt, n, stream: {
        "prompt": prompt,
        "max_new_tokens": n,
        "ignore_eos": True,
        "stream": stream,
    },
    probs_body=lambda prompt, k: {"prompt": prompt, "top_k": k},
    tokenize_body=lambda text: {"text": text},
    completion_tokens=lambda body: int(body["usage"]["completion_tokens"]),
    server_ttft=lambda body: (body.get("timing") or {}).get("time_to_first_token_seconds"),
    probs_ok=lambda body: bool(body.get("candidates")),
    stream_event=_genai_stream_event,
)

GENAI_NO_STREAM = replace(GENAI, streams=False)  # the Python baselines: same shapes, no streaming


def llama_adapter(cache_prompt: bool = False) -> Adapter:
    """llama.cpp's llama-server. `cache_prompt` off by default: llama-server would otherwise reuse a slot's
    KV cache for a repeated prompt prefix (W3 asks the same prompt every time), which the service does not do."""
    return Adapter(
        generate_path="/completion",
        probs_path="/completion",
        tokenize_path="/tokenize",
        health_path="/health",
        streams=True,
        generate_body=lambda prompt, n, stream: {
            "prompt": prompt,
            "n_predict": n,
            "ignore_eos": True,
            "temperature": 0,
            "stream": stream,
            "cache_prompt": cache_prompt,
        },
        probs_body=lambda prompt, k: {"prompt": prompt, "n_predict": 1, "n_probs": k, "cache_prompt": cache_prompt},
        tokenize_body=lambda text: {"content": text},
        completion_tokens=lambda body: int(body.get("tokens_predicted") or body["timings"]["predicted_n"]),
        server_ttft=lambda body: None,  # always streamed in W2
        probs_ok=lambda body: bool(body.get("completion_probabilities")),
        stream_event=_llama_stream_event,
    )


LLAMA = llama_adapter()

EMPTY = Adapter(  # bench/empty_app.py: only W4, against its empty route
    generate_path="",
    probs_path="",
    tokenize_path="/empty",
    health_path="/health",
    streams=False,
    generate_body=_unsupported,
    probs_body=_unsupported,
    tokenize_body=lambda text: {"text": text},
    completion_tokens=_unsupported,
    server_ttft=_unsupported,
    probs_ok=_unsupported,
    stream_event=_unsupported,
)

ADAPTERS: dict[str, Adapter] = {"genai": GENAI, "genai-nostream": GENAI_NO_STREAM, "llama": LLAMA, "empty": EMPTY}


# --------------------------------------------------------------------------------------------
# Measurements


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); q in [0, 100]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Outcome:
    ok: bool
    latency: float
    end: float
    tokens: int = 0
    ttft: float | None = None
    error: str = ""
    data: Any = None


def _check_local(url: str) -> None:
    host = urlparse(url).hostname
    if host not in {"127.0.0.1", "localhost", "::1"}:
        raise ValueError(f"the load generator only targets this machine (got {url!r})")


def _client(base_url: str, headers: dict[str, str], connections: int = 1) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=10.0),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


async def generate_once(client: httpx.AsyncClient, adapter: Adapter, prompt: str, tokens: int, stream: bool) -> Outcome:
    body = adapter.generate_body(prompt, tokens, stream)
    started = time.perf_counter()
    try:
        if not stream:
            response = await client.post(adapter.generate_path, json=body)
            end = time.perf_counter()
            if response.status_code != 200:
                return Outcome(False, end - started, end, error=f"HTTP {response.status_code}: {response.text[:200]}")
            data = response.json()
            return Outcome(
                True, end - started, end, tokens=adapter.completion_tokens(data), ttft=adapter.server_ttft(data)
            )
        first: float | None = None
        count = 0
        done_tokens: int | None = None
        async with client.stream("POST", adapter.generate_path, json=body) as response:
            if response.status_code != 200:
                await response.aread()
                end = time.perf_counter()
                return Outcome(False, end - started, end, error=f"HTTP {response.status_code}: {response.text[:200]}")
            event, data_lines = "", []
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    continue  # keep-alive comment
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data_lines.append(line[5:].strip())
                elif line == "" and data_lines:
                    raw = "\n".join(data_lines)
                    try:
                        data = json.loads(raw)
                    except json.JSONDecodeError:
                        data = raw
                    kind, n = adapter.stream_event(event, data)
                    event, data_lines = "", []
                    if kind == "token":
                        count += 1
                        if first is None:
                            first = time.perf_counter()
                    elif kind == "done":
                        done_tokens = n
                    elif kind == "error":
                        end = time.perf_counter()
                        return Outcome(False, end - started, end, error=f"error event: {raw[:200]}")
        end = time.perf_counter()
        if done_tokens is None and count == 0:
            return Outcome(False, end - started, end, error="stream ended without tokens")
        return Outcome(
            True,
            end - started,
            end,
            tokens=done_tokens if done_tokens is not None else count,
            ttft=(first - started) if first is not None else None,
        )
    except (httpx.HTTPError, KeyError, ValueError, TypeError) as exc:
        end = time.perf_counter()
        return Outcome(False, end - started, end, error=_error_text(exc))


async def probs_once(client: httpx.AsyncClient, adapter: Adapter, prompt: str, top_k: int) -> Outcome:
    started = time.perf_counter()
    try:
        response = await client.post(adapter.probs_path, json=adapter.probs_body(prompt, top_k))
        end = time.perf_counter()
        if response.status_code != 200:
            return Outcome(False, end - started, end, error=f"HTTP {response.status_code}: {response.text[:200]}")
        data = response.json()
        if not adapter.probs_ok(data):
            return Outcome(False, end - started, end, error=f"no probabilities in {response.text[:200]}")
        return Outcome(True, end - started, end, data=data)
    except (httpx.HTTPError, ValueError) as exc:
        end = time.perf_counter()
        return Outcome(False, end - started, end, error=_error_text(exc))


async def closed_loop(
    clients: int,
    seconds: float,
    grace: float,
    one_request: Callable[[int, int, httpx.AsyncClient], Any],
    base_url: str,
    headers: dict[str, str],
) -> tuple[list[Outcome], float, int]:
    """`clients` tasks each looping `one_request(client_index, iteration, http_client)` until `seconds` pass.

    Returns the outcomes, the time from start to the last completion, and how many requests were
    still running when the grace period ran out (cancelled, not counted).
    """
    outcomes: list[Outcome] = []
    started = time.perf_counter()
    deadline = started + seconds
    running = [0]

    async def client_loop(index: int) -> None:
        async with _client(base_url, headers) as http:
            iteration = 0
            while time.perf_counter() < deadline and len(outcomes) < MAX_REQUESTS:
                running[0] += 1
                try:
                    outcomes.append(await one_request(index, iteration, http))
                finally:
                    running[0] -= 1
                iteration += 1

    tasks = [asyncio.create_task(client_loop(i)) for i in range(clients)]
    _, pending = await asyncio.wait(tasks, timeout=seconds + grace)
    unfinished = running[0]
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    last = max((o.end for o in outcomes), default=time.perf_counter())
    return outcomes, max(last - started, 1e-9), unfinished


def _summarize_errors(outcomes: list[Outcome]) -> str:
    errors = [o.error for o in outcomes if not o.ok]
    return f"{len(errors)} failed, e.g. {errors[0]}" if errors else ""


# --------------------------------------------------------------------------------------------
# Workloads. Each returns {metric key: value}; a key ending in "note" holds text.


async def w1(
    base_url: str, adapter: Adapter, headers: dict[str, str], runs: int = 5, tokens: int = 128
) -> dict[str, Any]:
    _check_local(base_url)
    async with _client(base_url, headers) as http:
        warm = await generate_once(http, adapter, W1_PROMPT, min(tokens, 8), stream=False)
        if not warm.ok:
            raise RuntimeError(f"W1 warm-up failed: {warm.error}")
        rates: list[float] = []
        for _ in range(runs):
            outcome = await generate_once(http, adapter, W1_PROMPT, tokens, stream=False)
            if not outcome.ok:
                raise RuntimeError(f"W1 request failed: {outcome.error}")
            if outcome.tokens != tokens:
                raise RuntimeError(f"W1 asked {tokens} tokens, got {outcome.tokens} (ignore_eos not honoured?)")
            rates.append(outcome.tokens / outcome.latency)
    return {"w1_tps": statistics.median(rates), "w1_runs": rates}


async def w2(
    base_url: str,
    adapter: Adapter,
    headers: dict[str, str],
    seconds: float = 45,
    clients: int = 8,
    tokens: int = 64,
    health_every: float = 0.1,
    grace: float | None = None,
) -> dict[str, Any]:
    _check_local(base_url)
    stream = adapter.streams
    async with _client(base_url, headers) as http:  # warm-up, not measured
        warm = await generate_once(http, adapter, W2_PROMPTS[0], min(tokens, 4), stream=stream)
        if not warm.ok:
            raise RuntimeError(f"W2 warm-up failed: {warm.error}")

    health: list[float] = []
    health_failures = [0]
    stop = asyncio.Event()

    async def poll_health() -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=HEALTH_TIMEOUT_S) as http:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    response = await http.get(adapter.health_path)
                    if response.status_code != 200:
                        health_failures[0] += 1
                except httpx.HTTPError:
                    health_failures[0] += 1
                elapsed = time.perf_counter() - started
                health.append(elapsed)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=max(0.0, health_every - elapsed))

    async def one(index: int, iteration: int, http: httpx.AsyncClient) -> Outcome:
        prompt = W2_PROMPTS[(index + clients * iteration) % len(W2_PROMPTS)]
        outcome = await generate_once(http, adapter, prompt, tokens, stream)
        if outcome.ok and outcome.tokens != tokens:
            outcome.ok, outcome.error = False, f"asked {tokens} tokens, got {outcome.tokens}"
        return outcome

    poller = asyncio.create_task(poll_health())
    try:
        outcomes, elapsed, unfinished = await closed_loop(
            clients, seconds, grace if grace is not None else max(60.0, 3 * seconds), one, base_url, headers
        )
    finally:
        stop.set()
        await poller
    ok = [o for o in outcomes if o.ok]
    ttfts = [o.ttft for o in ok if o.ttft is not None]
    return {
        "w2_tps": sum(o.tokens for o in ok) / elapsed,
        "w2_p50": percentile([o.latency for o in ok], 50),
        "w2_p95": percentile([o.latency for o in ok], 95),
        "w2_ttft_p50": percentile(ttfts, 50),
        "w2_ttft_p95": percentile(ttfts, 95),
        "w2_ttft_how": "client, streamed" if stream else "server-reported, not streamed",
        "w2_health_p99": percentile(health, 99) * 1000,
        "w2_health_max": max(health, default=float("nan")) * 1000,
        "w2_requests": len(ok),
        "w2_failed": len(outcomes) - len(ok) + unfinished + health_failures[0],
        "w2_note": "; ".join(
            x
            for x in (
                _summarize_errors(outcomes),
                f"{unfinished} unfinished after the grace period" if unfinished else "",
                f"{health_failures[0]} /health polls failed" if health_failures[0] else "",
            )
            if x
        ),
    }


async def w3(
    base_url: str,
    adapter: Adapter,
    headers: dict[str, str],
    seconds: float = 30,
    clients: int = 8,
    top_k: int = 5,
    grace: float | None = None,
) -> dict[str, Any]:
    _check_local(base_url)
    async with _client(base_url, headers) as http:
        warm = await probs_once(http, adapter, W3_PROMPT, top_k)
        if not warm.ok:
            raise RuntimeError(f"W3 warm-up failed: {warm.error}")

    async def one(index: int, iteration: int, http: httpx.AsyncClient) -> Outcome:
        return await probs_once(http, adapter, W3_PROMPT, top_k)

    outcomes, elapsed, unfinished = await closed_loop(
        clients, seconds, grace if grace is not None else max(30.0, seconds), one, base_url, headers
    )
    ok = [o for o in outcomes if o.ok]
    return {
        "w3_rps": len(ok) / elapsed,
        "w3_p50": percentile([o.latency for o in ok], 50) * 1000,
        "w3_p95": percentile([o.latency for o in ok], 95) * 1000,
        "w3_requests": len(ok),
        "w3_prompt_tokens": warm.data.get("prompt_tokens") if isinstance(warm.data, dict) else None,
        "w3_failed": len(outcomes) - len(ok) + unfinished,
        "w3_note": "; ".join(
            x for x in (_summarize_errors(outcomes), f"{unfinished} unfinished" if unfinished else "") if x
        ),
    }


_WRK_TIME = re.compile(r"^([\d.]+)(us|ms|s|m)$")


def _wrk_ms(text: str) -> float:
    match = _WRK_TIME.match(text.strip())
    if not match:
        raise ValueError(f"unreadable wrk latency {text!r}")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def parse_wrk(output: str) -> dict[str, Any]:
    rps = re.search(r"Requests/sec:\s*([\d.]+)", output)
    if not rps:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{output[-1000:]}")
    result: dict[str, Any] = {"w4_rps": float(rps.group(1))}
    for q in ("50", "99"):
        match = re.search(rf"^\s*{q}%\s+(\S+)", output, re.MULTILINE)
        result[f"w4_p{q}"] = _wrk_ms(match.group(1)) if match else float("nan")
    total = re.search(r"(\d+) requests in", output)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", output)
    socket = re.search(r"Socket errors:\s*(.*)", output)
    result["w4_requests"] = int(total.group(1)) if total else 0
    result["w4_failed"] = int(non2xx.group(1)) if non2xx else 0
    notes = []
    if non2xx:
        notes.append(f"{non2xx.group(1)} non-2xx answers")
    if socket:
        notes.append(f"socket errors: {socket.group(1).strip()}")
    result["w4_note"] = "; ".join(notes)
    return result


def w4(
    base_url: str,
    adapter: Adapter,
    headers: dict[str, str],
    seconds: float = 20,
    connections: int = 8,
    threads: int = 1,
) -> dict[str, Any]:
    """wrk against the tokenize route (or the empty app's route) with a 1 KB English body."""
    _check_local(base_url)
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install -y wrk)")
    body = json.dumps(adapter.tokenize_body(W4_TEXT))
    check = httpx.post(
        base_url + adapter.tokenize_path,
        content=body,
        headers={"Content-Type": "application/json", **headers},
        timeout=60,
    )
    if check.status_code != 200:
        raise RuntimeError(f"W4 check request failed: HTTP {check.status_code}: {check.text[:200]}")
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{body}]==]", 'wrk.headers["Content-Type"] = "application/json"']
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    with tempfile.TemporaryDirectory(prefix="genai-bench-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text("\n".join(lines) + "\n")
        command = [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(script),
            base_url + adapter.tokenize_path,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-500:]}")
    result = parse_wrk(done.stdout)
    answer = check.json()
    result["w4_body_tokens"] = answer.get("count") if "count" in answer else len(answer.get("tokens") or []) or None
    return result


# --------------------------------------------------------------------------------------------
# Durations


@dataclass
class Plan:
    w1_runs: int = 5
    w1_tokens: int = 128
    w2_seconds: float = 45
    w2_tokens: int = 64
    w3_seconds: float = 30
    w4_seconds: float = 20
    clients: int = 8
    w5_clients: int = 32
    wrk_threads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick(cls) -> Plan:
        """Smoke-run durations: proves the harness end to end in well under a minute per server."""
        return cls(w1_runs=1, w1_tokens=16, w2_seconds=5, w2_tokens=16, w3_seconds=5, w4_seconds=3, w5_clients=16)


def w5(base_url: str, adapter: Adapter, headers: dict[str, str], plan: Plan) -> dict[str, Any]:
    """W2's loop at W5_CLIENTS clients: how the server holds up when more clients come than W2's eight."""
    values = asyncio.run(
        w2(base_url, adapter, headers, seconds=plan.w2_seconds, clients=plan.w5_clients, tokens=plan.w2_tokens)
    )
    return {"w5" + key[2:]: value for key, value in values.items()}


def run_workload(name: str, base_url: str, adapter: Adapter, headers: dict[str, str], plan: Plan) -> dict[str, Any]:
    if name == "W1":
        return asyncio.run(w1(base_url, adapter, headers, runs=plan.w1_runs, tokens=plan.w1_tokens))
    if name == "W2":
        return asyncio.run(
            w2(base_url, adapter, headers, seconds=plan.w2_seconds, clients=plan.clients, tokens=plan.w2_tokens)
        )
    if name == "W3":
        return asyncio.run(w3(base_url, adapter, headers, seconds=plan.w3_seconds, clients=plan.clients))
    if name == "W5":
        return w5(base_url, adapter, headers, plan)
    if name == "W4":
        return w4(
            base_url, adapter, headers, seconds=plan.w4_seconds, connections=plan.clients, threads=plan.wrk_threads
        )
    raise ValueError(f"unknown workload {name!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run benchmark workloads against a server already running on this machine."
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api", choices=sorted(ADAPTERS), default="genai")
    parser.add_argument("--workloads", default="W1,W2,W3,W4,W5")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--api-key", default=None, help="sent as `Authorization: Bearer …`")
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    for name in [w.strip().upper() for w in args.workloads.split(",") if w.strip()]:
        result = run_workload(name, args.url.rstrip("/"), ADAPTERS[args.api], headers, plan)
        print(name, json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
