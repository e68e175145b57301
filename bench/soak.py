"""Soak test: a mixed workload against the real server over localhost for a set time.

    .venv/bin/python bench/soak.py                          # 600 s after a 60 s warm-up; appends to bench/RESULTS.md
    .venv/bin/python bench/soak.py --duration 30 --warmup 15  # smoke run: printed only (unless --save)

Starts `python -m service serve --port P` on a free 127.0.0.1 port (the `GENAI_*` environment as it
is; log in .cache/bench-logs/soak.log), waits for `/ready`, then `--clients` closed-loop clients each
pick a weighted-random request from the mix below until the time is up, while a separate process
polls `GET /health` every 100 ms and this one samples the server's memory from /proc every 2 s.

The mix: every endpoint (tokenize, detokenize, next-token-probs, generate streamed and not,
classify-digit with pixels and with an uploaded PNG, /v1/completions and /v1/chat/completions streamed
and not, /v2 infer), clients that disconnect early (mid-stream, and before a non-streamed answer), and
bad input (each must get its 4xx).

Counted per endpoint: requests by status, p50/p95/p99 latency (request sent -> last byte) of answered
requests. "Lost": sent, but neither answered nor refused: a client-side exception or timeout, or a
stream that ended without its final event. Deliberate disconnects are counted apart, never as lost.

Targets (exit status 1 when one is missed): no 5xx (an `error` event inside a 200 stream counts too),
no lost request, bad input always answered 4xx, RSS growth under 5% from the end of the warm-up to
the end, `/health` p99 under 50 ms throughout, no generation left running or waiting afterwards.

Bounded: no new request starts after the deadline; requests still running get `--request-timeout`
(then count as lost); only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import math
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import contextlib

from machine import free_port, git_commit, machine_info

RESULTS = ROOT / "bench" / "RESULTS.md"
LOG_DIR = ROOT / ".cache" / "bench-logs"
FULL_RUN_SECONDS = 600

RSS_GROWTH_LIMIT = 0.05
HEALTH_P99_LIMIT_MS = 50.0

PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "Hello, my name is",
    "The quick brown fox",
    "Water boils at",
    "In 1492, Columbus",
    "My favourite recipe for soup",
]
LONG_TEXT = "The quick brown fox jumps over the lazy dog. " * 20


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# --- what one request did -------------------------------------------------------------------


@dataclass
class Outcome:
    endpoint: str
    status: int | None = None  # HTTP status, None when no answer came
    seconds: float | None = None  # sent -> last byte, answered requests only
    lost: str | None = None  # why it counts as lost (exception, timeout, truncated stream)
    server_error: str | None = None  # a 5xx, or an `error` event inside a 200 stream
    disconnected: bool = False  # we hung up on purpose
    wrong: str | None = None  # an answer that contradicts the request (e.g. bad input accepted)


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)


# --- request payloads -------------------------------------------------------------------------


def _digit_pixels(rng: random.Random) -> list[int]:
    """A crude stroke ("1" or "7"-ish) on black, 28x28 row-major, values 0..255."""
    pixels = [0] * 784
    column = rng.randint(10, 17)
    for row in range(5, 23):
        for dc in (0, 1, 2):
            pixels[row * 28 + column + dc] = 255
    if rng.random() < 0.5:
        for c in range(8, 20):
            pixels[5 * 28 + c] = 255
    return pixels


def _digit_png(pixels: list[int]) -> bytes:
    from PIL import Image

    image = Image.new("L", (28, 28))
    image.putdata([255 - v for v in pixels])  # dark ink on white paper, as a photo or canvas gives it
    image = image.resize((140, 140))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


class Payloads:
    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.pixels = [_digit_pixels(rng) for _ in range(8)]
        self.pngs = [_digit_png(p) for p in self.pixels]
        self.b64 = [base64.b64encode(p).decode() for p in self.pngs]


# --- the scenarios ----------------------------------------------------------------------------

Scenario = Callable[[httpx.AsyncClient, random.Random, Payloads, float], Awaitable[Outcome]]


async def _plain(
    client: httpx.AsyncClient,
    endpoint: str,
    method: str,
    path: str,
    timeout: float,
    check: Callable[[httpx.Response], str | None] | None = None,
    **kwargs: Any,
) -> Outcome:
    outcome = Outcome(endpoint)
    started = time.perf_counter()
    try:
        response = await client.request(method, path, timeout=timeout, **kwargs)
    except httpx.HTTPError as exc:
        outcome.lost = f"{type(exc).__name__}"
        return outcome
    outcome.seconds = time.perf_counter() - started
    outcome.status = response.status_code
    if response.status_code >= 500:
        outcome.server_error = f"{response.status_code}: {response.text[:200]}"
    elif response.status_code == 200 and check is not None:
        outcome.wrong = check(response)
    return outcome


async def _stream(
    client: httpx.AsyncClient,
    endpoint: str,
    path: str,
    body: dict[str, Any],
    timeout: float,
    *,
    openai: bool,
    disconnect_after: int | None = None,
) -> Outcome:
    """POST a streaming request and read its events: `token`... `done` (native) or `data:` ... `[DONE]` (/v1)."""
    outcome = Outcome(endpoint)
    started = time.perf_counter()
    finished = False
    events = 0
    try:
        async with client.stream("POST", path, json=body, timeout=timeout) as response:
            outcome.status = response.status_code
            if response.status_code != 200:
                await response.aread()
                outcome.seconds = time.perf_counter() - started
                if response.status_code >= 500:
                    outcome.server_error = f"{response.status_code}: {response.text[:200]}"
                return outcome
            event_name = None
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event_name = line[6:].strip()
                    if event_name == "error":
                        outcome.server_error = "error event in a 200 stream"
                elif line.startswith("data:"):
                    data = line[5:].strip()
                    events += 1
                    if openai and data == "[DONE]":
                        finished = True
                    elif not openai and event_name in ("done", "error"):
                        finished = True
                        if event_name == "error":
                            outcome.server_error = f"error event: {data[:200]}"
                    elif openai and '"error"' in data[:20]:
                        outcome.server_error = f"error chunk: {data[:200]}"
                    if disconnect_after is not None and events >= disconnect_after:
                        outcome.disconnected = True
                        return outcome  # leaving the block closes the connection mid-stream
    except httpx.HTTPError as exc:
        outcome.lost = type(exc).__name__
        return outcome
    outcome.seconds = time.perf_counter() - started
    if not finished and outcome.server_error is None:
        outcome.lost = "stream ended without its final event"
    return outcome


def _prompt(rng: random.Random) -> str:
    return rng.choice(PROMPTS)


def _has(key: str) -> Callable[[httpx.Response], str | None]:
    def check(response: httpx.Response) -> str | None:
        try:
            return None if key in response.json() else f"answer without `{key}`"
        except ValueError:
            return "answer is not JSON"

    return check


async def s_tokenize(c: httpx.AsyncClient, rng: random.Random, p: Payloads, t: float) -> Outcome:
    return await _plain(
        c, "tokenize", "POST", "/tokenize", t, _has("ids"), json={"text": rng.choice([LONG_TEXT, _prompt(rng)])}
    )


async def s_detokenize(c: httpx.AsyncClient, rng: random.Random, p: Payloads, t: float) -> Outcome:
    return await _plain(
        c,
        "detokenize",
        "POST",
        "/detokenize",
        t,
        _has("text"),
        json={"ids": [rng.randrange(0, 30000) for _ in range(rng.randint(1, 40))]},
    )


async def s_next_token(c: httpx.AsyncClient, rng: random.Random, p: Payloads, t: float) -> Outcome:
    return await _plain(
        c,
        "next-token-probs",
        "POST",
        "/next-token-probs",
        t,
        _has("candidates"),
        json={"prompt": _prompt(rng), "top_k": 5},
    )


def _generate_body(rng: random.Random, tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": _prompt(rng), "max_new_tokens": tokens}
    if rng.random() < 0.5:
        body.update(do_sample=True, temperature=0.8, top_p=0.95, seed=rng.randrange(1 << 30))
    return body


async def s_generate(c: httpx.AsyncClient, rng: random.Random, p: Payloads, t: float) -> Outcome:
    return await _plain(
        c, "generate", "POST", "/generate", t, _has("text"), json=_generate_body(rng, rng.randint(4, 16))
    )


async def s_generate_stream(c: httpx.AsyncClient, rng: random.Random, p: Payloads, t: float) -> Outcome:
    return await _stream(
        c, "generate stream", "/generate", {**_generate_body(rng, rng.randint(4, 16)), "stream": True}, t, openai=False
    )


async def s_generate_stream_disconnect(c: httpx.AsyncClient, rng: random.Random, p: Payloads, t: float) -> Outcome:
    body = {**_generate_body(rng, 64), "stream": True, "ignore_eos": True}
    return await _stream(
        c, "generate stream, client leaves", "/generate", body, t, openai=False, disconnect_after=rng.randint(1, 3)
    )


async def s_generate_disconnect(c: httpx.AsyncClient, rng: random.Random, p: Payloads, t: float) -> Outcome:
    """A non-streamed 64-token generation whose client gives up after a fraction of a second."""
    outcome = Outcome("generate, client leaves")
    try:
        await asyncio.wait_for(
            c.post("/generate", json={**_generate_body(rng, 64), "ignore_eos": True}, timeout=t), rng.uniform(0.1, 0.5)
        )
    except TimeoutError:
        outcome.disconnected = True  # cancelling the request closes its connection: the server sees a disconnect
        return outcome
    except httpx.HTTPError as exc:
        outcome.lost = type(exc).__name__
        return outcome
    outcome.disconnected = True  # it answered first; still a deliberate short wait, not a measurement
    return outcome


async def s_digit_pixels(c: httpx.AsyncClient, rng: random.Random, p: Payloads, t: float) -> Outcome:
    return await _plain(
        c, "classify-digit pixels", "POST", "/classify-digit", t, _has("digit"), json={"pixels": rng.choice(p.pixels)}
    )


async def s_digit_upload(c: httpx.AsyncClient, rng: random.Random, p: Payloads, t: float) -> Outcome:
    return await _plain(
        c,
        "classify-digit upload",
        "POST",
        "/classify-digit",
        t,
        _has("digit"),
        files={"file": ("digit.png", rng.choice(p.pngs), "image/png")},
    )


def _completion_body(rng: random.Random) -> dict[str, Any]:
    return {"prompt": _prompt(rng), "max_tokens": rng.randint(4, 16), "temperature": rng.choice([0, 0.8])}


def _chat_body(rng: random.Random) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": _prompt(rng)}],
        "max_tokens": rng.randint(4, 16),
        "temperature": rng.choice([0, 0.8]),
    }


async def s_v1_completions(c: httpx.AsyncClient, rng: random.Random, p: Payloads, t: float) -> Outcome:
    return await _plain(c, "/v1/completions", "POST", "/v1/completions", t, _has("choices"), json=_completion_body(rng))


async def s_v1_completions_stream(c: httpx.AsyncClient, rng: random.Random, p: Payloads, t: float) -> Outcome:
    return await _stream(
        c, "/v1/completions stream", "/v1/completions", {**_completion_body(rng), "stream": True}, t, openai=True
    )


async def s_v1_chat(c: httpx.AsyncClient, rng: random.Random, p: Payloads, t: float) -> Outcome:
    return await _plain(
        c, "/v1/chat/completions", "POST", "/v1/chat/completions", t, _has("choices"), json=_chat_body(rng)
    )


async def s_v1_chat_stream(c: httpx.AsyncClient, rng: random.Random, p: Payloads, t: float) -> Outcome:
    return await _stream(
        c, "/v1/chat/completions stream", "/v1/chat/completions", {**_chat_body(rng), "stream": True}, t, openai=True
    )


async def s_v1_stream_disconnect(c: httpx.AsyncClient, rng: random.Random, p: Payloads, t: float) -> Outcome:
    body = {**_chat_body(rng), "max_tokens": 64, "stream": True}
    return await _stream(
        c,
        "/v1/chat stream, client leaves",
        "/v1/chat/completions",
        body,
        t,
        openai=True,
        disconnect_after=rng.randint(1, 3),
    )


async def s_v2_infer(c: httpx.AsyncClient, rng: random.Random, p: Payloads, t: float) -> Outcome:
    batch = rng.randint(1, 4)
    data = [v / 255.0 for i in range(batch) for v in rng.choice(p.pixels)]
    body = {"inputs": [{"name": "input", "shape": [batch, 784], "datatype": "FP32", "data": data}]}
    return await _plain(c, "/v2 infer", "POST", "/v2/models/mnist/infer", t, _has("outputs"), json=body)


# Bad input: (label, request kwargs, the 4xx it must get).
BAD_INPUTS: list[tuple[str, dict[str, Any], int]] = [
    ("tokenize without text", {"method": "POST", "url": "/tokenize", "json": {}}, 422),
    (
        "tokenize, broken JSON",
        {
            "method": "POST",
            "url": "/tokenize",
            "content": b'{"text": ',
            "headers": {"content-type": "application/json"},
        },
        422,
    ),
    ("tokenize, text too long", {"method": "POST", "url": "/tokenize", "json": {"text": "x" * 200_001}}, 422),
    (
        "generate, max_new_tokens too large",
        {"method": "POST", "url": "/generate", "json": {"prompt": "x", "max_new_tokens": 10**6}},
        422,
    ),
    (
        "generate, negative temperature",
        {"method": "POST", "url": "/generate", "json": {"prompt": "x", "temperature": -1}},
        422,
    ),
    (
        "next-token-probs, top_k 0",
        {"method": "POST", "url": "/next-token-probs", "json": {"prompt": "x", "top_k": 0}},
        422,
    ),
    ("detokenize, id out of range", {"method": "POST", "url": "/detokenize", "json": {"ids": [10**9]}}, 422),
    ("classify-digit, 3 pixels", {"method": "POST", "url": "/classify-digit", "json": {"pixels": [1, 2, 3]}}, 422),
    (
        "classify-digit, not an image",
        {"method": "POST", "url": "/classify-digit", "files": {"file": ("x.png", b"not a picture", "image/png")}},
        422,
    ),
    (
        "classify-digit, text/plain",
        {"method": "POST", "url": "/classify-digit", "content": b"7", "headers": {"content-type": "text/plain"}},
        415,
    ),
    (
        "/v1/completions, negative max_tokens",
        {"method": "POST", "url": "/v1/completions", "json": {"prompt": "x", "max_tokens": -5}},
        400,
    ),
    ("/v1/chat, no messages", {"method": "POST", "url": "/v1/chat/completions", "json": {"messages": []}}, 400),
    ("/v2 infer, no inputs", {"method": "POST", "url": "/v2/models/mnist/infer", "json": {"inputs": []}}, 400),
    ("/v2 infer, unknown model", {"method": "POST", "url": "/v2/models/nope/infer", "json": {"inputs": []}}, 404),
    ("unknown route", {"method": "GET", "url": "/nope"}, 404),
]


async def s_bad_input(
    c: httpx.AsyncClient, rng: random.Random, p: Payloads, t: float, which: int | None = None
) -> Outcome:
    label, request, expected = BAD_INPUTS[which] if which is not None else rng.choice(BAD_INPUTS)
    outcome = Outcome("bad input")
    started = time.perf_counter()
    try:
        response = await c.request(timeout=t, **request)
    except httpx.HTTPError as exc:
        outcome.lost = type(exc).__name__
        return outcome
    outcome.seconds = time.perf_counter() - started
    outcome.status = response.status_code
    if response.status_code >= 500:
        outcome.server_error = f"{label}: {response.status_code}"
    elif response.status_code != expected and response.status_code != 429:
        outcome.wrong = f"{label}: got {response.status_code}, expected {expected}"
    return outcome


# (scenario, weight): generation-heavy, like a real language-model service, with every path exercised.
MIX: list[tuple[Scenario, float]] = [
    (s_tokenize, 8),
    (s_detokenize, 5),
    (s_next_token, 8),
    (s_generate, 8),
    (s_generate_stream, 8),
    (s_generate_stream_disconnect, 3),
    (s_generate_disconnect, 3),
    (s_digit_pixels, 7),
    (s_digit_upload, 6),
    (s_v1_completions, 5),
    (s_v1_completions_stream, 4),
    (s_v1_chat, 5),
    (s_v1_chat_stream, 4),
    (s_v1_stream_disconnect, 2),
    (s_v2_infer, 6),
    (s_bad_input, 8),
]


# Table rows in this order (the endpoint labels the scenarios record).
ENDPOINT_ORDER = [
    "tokenize",
    "detokenize",
    "next-token-probs",
    "generate",
    "generate stream",
    "generate, client leaves",
    "generate stream, client leaves",
    "classify-digit pixels",
    "classify-digit upload",
    "/v1/completions",
    "/v1/completions stream",
    "/v1/chat/completions",
    "/v1/chat/completions stream",
    "/v1/chat stream, client leaves",
    "/v2 infer",
    "bad input",
]


# --- the /health prober (its own process, so the load generator's event loop cannot delay it) -----


def _health_prober(base_url: str, stop: Any, deadline: float, interval: float, conn: Any) -> None:
    """Poll GET /health every `interval` s until `stop` is set (or the wall clock passes `deadline`);
    send back (time, ms, status) for every probe."""
    samples: list[tuple[float, float, int]] = []
    with httpx.Client(base_url=base_url, timeout=5) as client:
        while not stop.is_set() and time.time() < deadline:
            started = time.perf_counter()
            try:
                status = client.get("/health").status_code
            except httpx.HTTPError:
                status = 0
            samples.append((time.time(), (time.perf_counter() - started) * 1000, status))
            time.sleep(max(0.0, interval - (time.perf_counter() - started)))
    conn.send(samples)
    conn.close()


# --- memory ------------------------------------------------------------------------------------


def read_memory(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, VmSwap (kB) of a process, from /proc/PID/status."""
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "VmSwap"):
                values[key] = int(rest.split()[0])
    except (OSError, ValueError):
        pass
    return values


# --- the server -------------------------------------------------------------------------------


class Server:
    """`python -m service serve` on a free localhost port, in its own process group."""

    def __init__(self, port: int, ready_timeout: float) -> None:
        self.base_url = f"http://127.0.0.1:{port}"
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / "soak.log"
        self._log = self.log_path.open("w")
        env = {**os.environ, "GENAI_HOST": "127.0.0.1"}
        command = [sys.executable, "-m", "service", "serve", "--port", str(port)]
        log(f"starting {' '.join(command)} (log {self.log_path.relative_to(ROOT)})")
        started = time.perf_counter()
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"server exited with code {self.process.returncode} before ready; see {self.log_path}"
                )
            try:
                if httpx.get(self.base_url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server not ready after {ready_timeout:.0f} s; see {self.log_path}")
            time.sleep(0.5)
        log(f"ready in {time.perf_counter() - started:.1f} s (pid {self.process.pid})")

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> int | None:
        """SIGTERM (graceful), then SIGKILL; returns the exit code."""
        if self.process.poll() is None:
            for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.process.pid, sig)  # the group this script started
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log.close()
        return self.process.returncode


# --- running the load -------------------------------------------------------------------------


async def _client_loop(
    client: httpx.AsyncClient,
    rng: random.Random,
    payloads: Payloads,
    phases: list[tuple[float, Tally]],
    request_timeout: float,
) -> None:
    """Closed loop: pick a scenario, run it, record it in the tally of the phase it started in."""
    scenarios, weights = zip(*MIX, strict=True)
    for until, tally in phases:
        while time.monotonic() < until:
            scenario = rng.choices(scenarios, weights)[0]
            outcome = await scenario(client, rng, payloads, request_timeout)
            tally.add(outcome)


async def preflight(base_url: str, payloads: Payloads, request_timeout: float, tally: Tally) -> None:
    """Every scenario once and every bad input once, one at a time, before the load: a wrong
    expectation shows up in seconds rather than after ten minutes."""
    rng = random.Random(0)
    async with httpx.AsyncClient(base_url=base_url) as client:
        for scenario, _ in MIX:
            tally.add(await scenario(client, rng, payloads, request_timeout))
        for which in range(len(BAD_INPUTS)):
            tally.add(await s_bad_input(client, rng, payloads, request_timeout, which))
    problems = [o for o in tally.outcomes if o.lost or o.server_error or o.wrong]
    log(f"preflight: {len(tally.outcomes)} requests, {len(problems)} problems" + "".join(f"\n  {o}" for o in problems))


async def run_load(
    base_url: str,
    clients: int,
    warmup: float,
    duration: float,
    request_timeout: float,
    seed: int,
    on_warm: Callable[[], None],
) -> tuple[Tally, Tally, float]:
    payloads = Payloads(seed)
    warm, measured = Tally(), Tally()
    await preflight(base_url, payloads, request_timeout, warm)
    start = time.monotonic()
    phases = [(start + warmup, warm), (start + warmup + duration, measured)]
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, limits=limits) as client:

        async def mark_warm() -> None:
            await asyncio.sleep(warmup)
            on_warm()

        marker = asyncio.create_task(mark_warm())
        rngs = [random.Random(seed * 1000 + i) for i in range(clients)]
        await asyncio.gather(
            *(_client_loop(client, rngs[i], payloads, phases, request_timeout) for i in range(clients))
        )
        await marker
    return warm, measured, time.monotonic() - start - warmup


async def engine_counts(base_url: str) -> dict[str, float]:
    """genai_requests_running / genai_requests_waiting from /metrics."""
    out: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        text = (await client.get("/metrics")).text
    for line in text.splitlines():
        for name in ("genai_requests_running", "genai_requests_waiting"):
            if line.startswith((name + " ", name + "{")):
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


# --- the report -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))  # nearest rank
    return ordered[index]


def _ms(value: float | None) -> str:
    return "—" if value is None else (f"{value * 1000:.0f}" if value >= 0.1 else f"{value * 1000:.1f}")


def endpoint_rows(tally: Tally) -> list[str]:
    by_endpoint: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in tally.outcomes:
        by_endpoint[outcome.endpoint].append(outcome)
    rows = [
        "| Endpoint | Requests | Statuses | p50 ms | p95 ms | p99 ms | Client left | Lost | 5xx / error events | Wrong answers |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for endpoint, outcomes in sorted(
        by_endpoint.items(), key=lambda item: ENDPOINT_ORDER.index(item[0]) if item[0] in ENDPOINT_ORDER else 99
    ):
        statuses = Counter(o.status for o in outcomes if o.status is not None)
        latencies = [o.seconds for o in outcomes if o.seconds is not None and not o.disconnected]
        rows.append(
            f"| {endpoint} | {len(outcomes)} | {', '.join(f'{s}×{n}' for s, n in sorted(statuses.items())) or '—'} "
            f"| {_ms(percentile(latencies, 50))} | {_ms(percentile(latencies, 95))} | {_ms(percentile(latencies, 99))} "
            f"| {sum(o.disconnected for o in outcomes)} | {sum(o.lost is not None for o in outcomes)} "
            f"| {sum(o.server_error is not None for o in outcomes)} | {sum(o.wrong is not None for o in outcomes)} |"
        )
    everything = tally.outcomes
    statuses = Counter(o.status for o in everything if o.status is not None)
    rows.append(
        f"| **all** | {len(everything)} | {', '.join(f'{s}×{n}' for s, n in sorted(statuses.items()))} | | | "
        f"| {sum(o.disconnected for o in everything)} | {sum(o.lost is not None for o in everything)} "
        f"| {sum(o.server_error is not None for o in everything)} | {sum(o.wrong is not None for o in everything)} |"
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration", type=float, default=FULL_RUN_SECONDS, help="measured seconds after the warm-up (default 600)"
    )
    parser.add_argument(
        "--warmup", type=float, default=60.0, help="seconds of the same load before measuring (default 60)"
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent closed-loop clients (default 8)")
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=120.0,
        help="a request not answered by then counts as lost (default 120 s)",
    )
    parser.add_argument("--port", type=int, default=None, help="server port (default: a free one)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="file the report is appended to (default bench/RESULTS.md)"
    )
    parser.add_argument(
        "--save", action="store_true", help="append even a run shorter than 600 s (labelled a smoke run)"
    )
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)

    started_at = datetime.now(UTC)
    machine, commit = machine_info(), git_commit()
    server = Server(args.port or free_port(), args.ready_timeout)
    memory: list[tuple[float, dict[str, int]]] = []
    warm_memory: dict[str, int] = {}
    exit_code: int | None = None
    try:
        total = args.warmup + args.duration
        spawn = mp.get_context("spawn")
        parent, child = spawn.Pipe(duplex=False)
        probing = spawn.Event()
        hard_stop = time.time() + total + args.request_timeout + 60
        prober = spawn.Process(
            target=_health_prober, args=(server.base_url, probing, hard_stop, 0.1, child), daemon=True
        )
        prober.start()

        def on_warm() -> None:
            warm_memory.update(read_memory(server.pid))
            log(f"warm-up done; measuring for {args.duration:.0f} s; memory {warm_memory}")

        async def sample_memory(stop: asyncio.Event) -> None:
            while not stop.is_set():
                memory.append((time.monotonic(), read_memory(server.pid)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2.0)

        async def everything() -> tuple[Tally, Tally, float, dict[str, float]]:
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_memory(stop))
            warm, measured, seconds = await run_load(
                server.base_url, args.clients, args.warmup, args.duration, args.request_timeout, args.seed, on_warm
            )
            await asyncio.sleep(2.0)  # cancelled generations leave the batch within a step; give them a moment
            counts = await engine_counts(server.base_url)
            stop.set()
            await sampler
            return warm, measured, seconds, counts

        log(f"load: {args.clients} clients, {args.warmup:.0f} s warm-up + {args.duration:.0f} s")
        warm, measured, measured_seconds, counts = asyncio.run(everything())
        end_memory = read_memory(server.pid)
        probing.set()
        health = parent.recv() if parent.poll(30) else []
        prober.join(10)
    finally:
        exit_code = server.stop()

    everything_outcomes = warm.outcomes + measured.outcomes
    server_errors = [o for o in everything_outcomes if o.server_error]
    lost = [o for o in everything_outcomes if o.lost]
    wrong = [o for o in everything_outcomes if o.wrong]
    health_ms = [ms for _, ms, status in health if status == 200]
    health_failed = sum(1 for _, _, status in health if status != 200)
    health_p99 = percentile(health_ms, 99)
    rss0, rss1 = warm_memory.get("VmRSS"), end_memory.get("VmRSS")
    growth = (rss1 - rss0) / rss0 if rss0 and rss1 else None
    anon0, anon1 = warm_memory.get("RssAnon"), end_memory.get("RssAnon")
    anon_growth = f" (RssAnon {(anon1 - anon0) / anon0:+.2%})" if anon0 and anon1 else ""
    peak_rss = max([m.get("VmRSS", 0) for _, m in memory] + [end_memory.get("VmRSS", 0)])
    leftover = counts.get("genai_requests_running", 0) + counts.get("genai_requests_waiting", 0)

    health_text = (
        "no probes"
        if health_p99 is None
        else f"{health_p99:.1f} ms over {len(health)} probes" + (f", {health_failed} not 200" if health_failed else "")
    )
    engine_text = (
        f"running {counts.get('genai_requests_running', float('nan')):g}, waiting {counts.get('genai_requests_waiting', float('nan')):g}"
        if counts
        else "metrics unreadable"
    )
    # (target, measured, met)
    targets: list[tuple[str, str, bool]] = [
        ("no 5xx (error events inside 200 streams count)", f"{len(server_errors)}", not server_errors),
        ("no lost request", f"{len(lost)}", not lost),
        ("bad input always its 4xx; answers well-formed", f"{len(wrong)} wrong", not wrong),
        (
            f"RSS growth after warm-up < {RSS_GROWTH_LIMIT:.0%}",
            "—" if growth is None else f"VmRSS {growth:+.2%}" + anon_growth,
            growth is not None and growth < RSS_GROWTH_LIMIT,
        ),
        (
            f"/health p99 < {HEALTH_P99_LIMIT_MS:.0f} ms, always 200",
            health_text,
            health_p99 is not None and health_p99 < HEALTH_P99_LIMIT_MS and not health_failed,
        ),
        ("no generation left running or waiting after the run", engine_text, bool(counts) and leftover == 0),
    ]
    met = all(ok for _, _, ok in targets)

    smoke = args.duration < FULL_RUN_SECONDS
    kind = (
        f"soak SMOKE run ({args.duration:.0f} s: not the 10-minute soak; RSS figures not meaningful)"
        if smoke
        else f"soak run ({args.duration / 60:.0f} min)"
    )
    answered = [o for o in measured.outcomes if o.status is not None]

    def mem(m: dict[str, int]) -> str:
        return ", ".join(f"{k} {m[k] / 1024:.0f} MiB" for k in ("VmRSS", "RssAnon", "VmSwap") if k in m) or "unreadable"

    command = "bench/soak.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"## {started_at:%Y-%m-%d %H:%M} UTC — {kind}",
        "",
        f"Commit {commit}. Machine: {machine}. Command: `{command.strip()}`. {args.clients} clients, "
        f"{args.warmup:.0f} s warm-up + {args.duration:.0f} s measured (the last request ended {measured_seconds:.0f} s after the warm-up); "
        f"{len(answered) / max(measured_seconds, 1e-9):.1f} answered req/s. "
        f"Server exit code after SIGTERM: {exit_code}.",
        "",
        "Requests in the measured window (latency: request sent -> last byte, answered requests only):",
        "",
        *endpoint_rows(measured),
        "",
        "| Memory (server process) | After warm-up | End | Peak VmRSS |",
        "|---|---|---|---|",
        f"| /proc/{{pid}}/status | {mem(warm_memory)} | {mem(end_memory)} | {peak_rss / 1024:.0f} MiB |",
        "",
        "| Target | Result | Met |",
        "|---|---|---|",
        *(f"| {name} | {value} | {'yes' if ok else '**no**'} |" for name, value, ok in targets),
        "",
        f"- Preflight (every scenario and bad input once) and warm-up: {len(warm.outcomes)} requests ({sum(o.server_error is not None for o in warm.outcomes)} 5xx, "
        f"{sum(o.lost is not None for o in warm.outcomes)} lost, {sum(o.wrong is not None for o in warm.outcomes)} wrong; counted in the targets).",
    ]
    for label, items, attr in (
        ("5xx", server_errors, "server_error"),
        ("lost", lost, "lost"),
        ("wrong", wrong, "wrong"),
    ):
        if items:
            examples = Counter(f"{o.endpoint}: {getattr(o, attr)}" for o in items).most_common(5)
            lines.append(f"- {label}: " + "; ".join(f"{text} (×{n})" for text, n in examples))
    genai = {k: v for k, v in os.environ.items() if k.startswith("GENAI_")}
    lines.append(
        "- Settings: "
        + (", ".join(f"{k}={v}" for k, v in sorted(genai.items())) if genai else "defaults (no GENAI_* set)")
        + "."
    )
    lines.append(f"- Verdict: {'all targets met' if met else 'TARGET MISSED'}.")
    report = "\n".join(lines) + "\n"
    print(report)
    if (not smoke or args.save) and not args.no_save:
        new = not args.results.exists()
        with args.results.open("a") as out:
            if new:
                out.write(
                    "# Benchmark results\n\nAppended by `bench/run.py` and `bench/soak.py` (see bench/README.md). Newest last.\n\n"
                )
            out.write(report + "\n")
        log(f"appended to {args.results}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
