"""Slow clients against /health: its latency idle, then while 100 connections send their head a byte a second.

    .venv/bin/python bench/slow_clients.py              # 20 s idle + 20 s of slow connections; appends to bench/RESULTS.md
    .venv/bin/python bench/slow_clients.py --no-save    # printed only

Starts `python -m service serve` on a free 127.0.0.1 port (the `GENAI_*` environment as it is; log in
.cache/bench-logs/soak.log), waits for `/ready`, then a separate process polls `GET /health` every
100 ms through two phases: idle, and with `--connections` connections each trickling a request head
one byte a second (each closed by the server's head deadline, GENAI_HTTP_HEADER_TIMEOUT_S, is
reopened until the phase ends). The table gives /health p50/p95/p99/max in each phase, how the slow
connections ended, and the server's VmRSS.

Target (exit status 1 when missed): /health p99 under 50 ms with the slow connections open, every
probe 200. The unit test tests/http/test_http_limits.py drives the same connections (through
`trickle_heads` below) and asserts what does not depend on this machine's speed: deadline, 408s,
memory, and that /health is never held up behind them.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import selectors
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from machine import free_port, git_commit, machine_info

RESULTS = ROOT / "bench" / "RESULTS.md"
HEALTH_P99_LIMIT_MS = 50.0
HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\nX-Slow: " + b"s" * 200


@dataclass
class Trickled:
    """How the slow connections of one run ended."""

    lifetimes: list[float] = field(default_factory=list)  # opened -> closed by the server, seconds
    answers: list[bytes] = field(default_factory=list)  # what the server sent before closing
    still_open: int = 0  # connections the server had not closed by the hard stop


@dataclass
class _SlowConnection:
    opened: float  # time.monotonic()
    sent: int = 0  # bytes of HEAD sent so far
    got: bytes = b""  # what the server has sent


def trickle_heads(
    port: int, connections: int, duration: float, deadline: float, on_tick: Callable[[], None] = lambda: None
) -> Trickled:
    """Keep `connections` connections sending HEAD one byte a second for `duration` s (each the server
    closes is reopened until 1 s before the end), then wait for the server to close the rest (at most
    `deadline` + 5 s). `on_tick` runs once a second (e.g. to sample memory)."""
    selector = selectors.DefaultSelector()
    open_conns: dict[socket.socket, _SlowConnection] = {}
    result = Trickled()

    def open_one() -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.setblocking(False)
        open_conns[sock] = _SlowConnection(time.monotonic())
        selector.register(sock, selectors.EVENT_READ)

    def closed(sock: socket.socket) -> None:
        state = open_conns.pop(sock)
        selector.unregister(sock)
        sock.close()
        result.lifetimes.append(time.monotonic() - state.opened)
        result.answers.append(state.got)

    until = time.monotonic() + duration
    hard_stop = until + deadline + 5  # the last ones opened are closed by their deadline, well before this
    try:
        for _ in range(connections):
            open_one()
        next_tick = time.monotonic()
        while open_conns and time.monotonic() < hard_stop:
            if time.monotonic() >= next_tick:
                next_tick += 1.0
                for sock, state in list(open_conns.items()):
                    if state.sent < len(HEAD):
                        try:
                            sock.send(HEAD[state.sent : state.sent + 1])
                            state.sent += 1
                        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                            pass
                on_tick()
            for key, _ in selector.select(timeout=max(0.0, min(next_tick, hard_stop) - time.monotonic())):
                readable = key.fileobj
                assert isinstance(readable, socket.socket)  # only sockets are registered
                try:
                    chunk = readable.recv(65536)
                except BlockingIOError:
                    continue
                except (ConnectionResetError, BrokenPipeError):
                    chunk = b""
                if chunk:
                    open_conns[readable].got += chunk
                    continue
                closed(readable)
                if time.monotonic() < until - 1:
                    open_one()
        result.still_open = len(open_conns)
    finally:
        for sock in list(open_conns):
            sock.close()
    return result


def _probe_health(base_url: str, seconds: float, conn: object) -> None:
    """GET /health every 100 ms for `seconds`; send back (ms, status) of every probe."""
    import httpx

    samples: list[tuple[float, int]] = []
    until = time.monotonic() + seconds
    with httpx.Client(base_url=base_url, timeout=5) as client:
        while time.monotonic() < until:
            started = time.perf_counter()
            try:
                status = client.get("/health").status_code
            except httpx.HTTPError:
                status = 0
            samples.append(((time.perf_counter() - started) * 1000, status))
            time.sleep(max(0.0, 0.1 - (time.perf_counter() - started)))
    conn.send(samples)  # type: ignore[attr-defined]


def _row(phase: str, samples: list[tuple[float, int]]) -> str:
    ms = sorted(m for m, status in samples if status == 200)
    if len(ms) < 2:
        return f"| {phase} | {len(samples)} | — | — | — | — | {len(samples) - len(ms)} |"
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return (
        f"| {phase} | {len(samples)} | {q[49]:.1f} | {q[94]:.1f} | {q[98]:.1f} | {ms[-1]:.1f} "
        f"| {len(samples) - len(ms)} |"
    )


def main(argv: list[str] | None = None) -> int:
    from soak import Server, log, read_memory

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of each phase (default 20)")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)

    started_at = datetime.now(UTC)
    machine, commit = machine_info(), git_commit()
    deadline = float(os.environ.get("GENAI_HTTP_HEADER_TIMEOUT_S", 10.0))
    server = Server(free_port(), args.ready_timeout)
    spawn = mp.get_context("spawn")
    try:
        phases: dict[str, list[tuple[float, int]]] = {}
        rss: list[int] = []
        for phase in ("idle", f"{args.connections} slow connections"):
            parent, child = spawn.Pipe(duplex=False)
            prober = spawn.Process(target=_probe_health, args=(server.base_url, args.duration, child), daemon=True)
            prober.start()
            if phase == "idle":
                rss.append(read_memory(server.pid).get("VmRSS", 0))
                time.sleep(args.duration)
            else:
                log(f"{args.connections} connections trickling a head for {args.duration:.0f} s")
                trickled = trickle_heads(
                    int(server.base_url.rsplit(":", 1)[1]),
                    args.connections,
                    args.duration,
                    deadline,
                    lambda: rss.append(read_memory(server.pid).get("VmRSS", 0)),
                )
            phases[phase] = parent.recv() if parent.poll(args.duration + 30) else []
            prober.join(10)
    finally:
        exit_code = server.stop()

    loaded = phases[f"{args.connections} slow connections"]
    ok_ms = [m for m, status in loaded if status == 200]
    p99 = statistics.quantiles(ok_ms, n=100, method="inclusive")[98] if len(ok_ms) >= 2 else float("inf")
    met = p99 < HEALTH_P99_LIMIT_MS and len(ok_ms) == len(loaded) > 0
    answered_408 = sum(answer.startswith(b"HTTP/1.1 408") for answer in trickled.answers)
    lines = [
        f"## {started_at:%Y-%m-%d %H:%M} UTC — slow clients (bench/slow_clients.py)",
        "",
        f"Commit {commit}. Machine: {machine}. {args.connections} connections sending a {len(HEAD)}-byte head "
        f"a byte a second, {args.duration:.0f} s a phase, head deadline {deadline:g} s. "
        f"Server exit code after SIGTERM: {exit_code}.",
        "",
        "| /health (every 100 ms) | Probes | p50 ms | p95 ms | p99 ms | max ms | Not 200 |",
        "|---|---|---|---|---|---|---|",
        *(_row(phase, samples) for phase, samples in phases.items()),
        "",
        f"- Slow connections: {len(trickled.lifetimes)} closed by the server after "
        f"{min(trickled.lifetimes, default=0):.2f}–{max(trickled.lifetimes, default=0):.2f} s, "
        f"{answered_408} with a 408, {trickled.still_open} still open at the end.",
        f"- VmRSS: {rss[0] / 1024:.1f} MiB idle, at most {max(rss) / 1024:.1f} MiB with the slow connections.",
        f"- Target /health p99 < {HEALTH_P99_LIMIT_MS:.0f} ms under slow connections, always 200: "
        f"{'met' if met else 'MISSED'} ({p99:.1f} ms).",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if not args.no_save:
        with args.results.open("a") as out:
            out.write(report + "\n")
        log(f"appended to {args.results}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
