"""A/B of the HTTP server layer: W2 and W4 of the service, and W4 of the empty app, per variant.

Each service variant is a checkout of this repository (e.g. `git clone` of the commit before and after a
change) served as `python -m service serve` from that folder with this venv. Every server runs for the
whole session; short slices (W2 then W4) alternate between them, `--rounds` times, so that drift of the
machine falls on all of them alike. While a slice runs, the CPU used by every other process on the
machine is measured (/proc/stat less this script's tree); a slice during which others used more than
`--max-others` cores is discarded and measured again. The empty-app variants serve bench/empty_app.py's
app through uvicorn's default protocol, the service's guarded one, or h11, and measure only W4 (the
protocol's own cost, with no app work to hide it).

    .venv/bin/python bench/http_ab.py --variant before=/tmp/bench-before --variant after=/tmp/bench-after \
        --empty default,guarded,h11 --rounds 2 [--save]

Prints a Markdown table (median over kept slices, and each variant's ratio to the first); `--save`
appends it to bench/RESULTS.md. Run on a quiet machine (no test suite running).
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
import loadgen

PYTHON = sys.executable
RESULTS = BENCH / "RESULTS.md"
KEYS = [
    ("w2_tps", "W2 aggregate tokens/s", "{:.1f}"),
    ("w2_p95", "W2 latency p95 (s)", "{:.2f}"),
    ("w2_ttft_p95", "W2 time to first token p95 (s)", "{:.3f}"),
    ("w2_health_p99", "W2 /health p99 (ms)", "{:.1f}"),
    ("w2_requests", "W2 requests done", "{:.0f}"),
    ("w2_failed", "W2 requests failed", "{:.0f}"),
    ("w4_rps", "W4 tokenize req/s", "{:.0f}"),
    ("w4_p99", "W4 latency p99 (ms)", "{:.2f}"),
    ("others_cores", "other processes' CPU meanwhile (cores)", "{:.2f}"),
]
EMPTY_KEYS = [
    ("w4_rps", "W4 empty route req/s", "{:.0f}"),
    ("w4_p99", "W4 empty route p99 (ms)", "{:.2f}"),
    ("others_cores", "other processes' CPU meanwhile (cores)", "{:.2f}"),
]


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _busy_jiffies() -> int:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq + steal


def _own_jiffies(pids: list[int]) -> int:
    """CPU time of this script (with its reaped children, e.g. wrk) and of the servers it runs."""
    total = 0
    for pid, with_children in [(os.getpid(), True), *[(p, False) for p in pids]]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if with_children else 0)
    return total


class OthersCpu:
    """Cores used by every other process on the machine while a measurement runs."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.cores = float("nan")

    def __enter__(self) -> OthersCpu:
        self._t, self._busy, self._own = time.monotonic(), _busy_jiffies(), _own_jiffies(self.pids)
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.monotonic() - self._t
        others = (_busy_jiffies() - self._busy) - (_own_jiffies(self.pids) - self._own)
        self.cores = max(0.0, others / CLK_TCK / elapsed)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_empty(mode: str, port: int) -> None:
    """The empty app of bench/empty_app.py through one HTTP protocol (run in a child process)."""
    import runpy

    import uvicorn

    mode, _, folder = mode.partition("@")  # "guarded@/path/to/checkout": that checkout's protocol
    sys.path.insert(0, folder or str(ROOT))
    from service.config import Settings
    from service.http.protocol import HttpLimits, guarded_protocol

    app = runpy.run_path(str(BENCH / "empty_app.py"))["app"]
    settings = Settings()
    kind = mode.split("-")[0]  # "guarded-timers": a guarded protocol, labelled
    http: Any = {"default": "auto", "h11": "h11", "guarded": guarded_protocol(HttpLimits.from_settings(settings))}[kind]
    head_limit = settings.http_max_header_bytes if kind == "h11" else None  # None: uvicorn's default
    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", http=http, h11_max_incomplete_event_size=head_limit
    )


class Server:
    def __init__(self, command: list[str], cwd: Path, ready_path: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port)],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{command} exited with {self.process.returncode}")
            try:
                if httpx.get(self.base + ready_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{command} not ready in 300 s")
            time.sleep(0.3)

    def head_limit_status(self) -> int:
        """What a 70 KB request head gets: 200 without a head limit, 431 with one."""
        filler = "".join(f"X-Filler-{i}: {'f' * 1000}\r\n" for i in range(70)).encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + filler + b"\r\n")
            answer = sock.recv(64)
        return int(answer.split()[1]) if answer else 0

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the group this script started
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def table(
    title: str, names: list[str], runs: dict[str, list[dict[str, Any]]], keys: list[tuple[str, str, str]]
) -> list[str]:
    lines = [f"| {title} | " + " | ".join(names) + " | " + " | ".join(f"{n}/{names[0]}" for n in names[1:]) + " |"]
    lines.append("|---|" + "---:|" * (2 * len(names) - 1))
    for key, label, fmt in keys:
        medians = []
        for name in names:
            values = [r[key] for r in runs[name] if isinstance(r.get(key), (int, float))]
            medians.append(statistics.median(values) if values else float("nan"))
        cells = [
            fmt.format(m) + " (" + ", ".join(fmt.format(r[key]) for r in runs[name] if key in r) + ")"
            for m, name in zip(medians, names, strict=True)
        ]
        ratios = [f"{m / medians[0]:.3f}x" if medians[0] else "" for m in medians[1:]]
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--variant", action="append", default=[], help="NAME=DIR: a checkout to serve (first = the reference)"
    )
    parser.add_argument(
        "--empty",
        default="",
        help="comma-separated empty-app protocols: default,guarded,h11 "
        "(MODE@DIR: the service package of that checkout)",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--w2-seconds", type=float, default=45)
    parser.add_argument("--w4-seconds", type=float, default=20)
    parser.add_argument("--save", action="store_true")
    parser.add_argument(
        "--max-others",
        type=float,
        default=0.15,
        help="discard (and redo) a slice when other processes used more cores than this",
    )
    parser.add_argument("--max-minutes", type=float, default=60, help="stop measuring after this long")
    parser.add_argument("--serve-empty", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_empty:
        serve_empty(args.serve_empty, args.port)
        return 0

    variants = [(v.split("=", 1)[0], Path(v.split("=", 1)[1]).resolve()) for v in args.variant]
    empties = [m.strip() for m in args.empty.split(",") if m.strip()]
    plan = loadgen.Plan(w2_seconds=args.w2_seconds, w4_seconds=args.w4_seconds)
    adapter = loadgen.ADAPTERS["genai"]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    empty_runs: dict[str, list[dict[str, Any]]] = {m: [] for m in empties}
    heads: dict[str, int] = {}
    discarded: list[str] = []
    kept_busy: list[str] = []
    started = time.time()
    give_up = time.monotonic() + args.max_minutes * 60
    load = os.getloadavg()
    servers: dict[str, Server] = {}
    try:
        # Every server runs for the whole session (idle between its slices), so slices can alternate quickly.
        for name, folder in variants:
            log(f"starting service {name} ({folder})")
            servers[name] = Server(
                [PYTHON, "-m", "service", "serve"], folder, "/ready", {**os.environ, "PYTHONPATH": str(folder)}
            )
            heads[name] = servers[name].head_limit_status()
        for mode in empties:
            servers["empty:" + mode] = Server(
                [PYTHON, str(BENCH / "http_ab.py"), "--serve-empty", mode],
                ROOT,
                "/health",
                {**os.environ, "PYTHONPATH": ""},
            )
        pids = [server.process.pid for server in servers.values()]

        def measure(label: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
            while True:
                with OthersCpu(pids) as others:
                    result = work()
                result["others_cores"] = others.cores
                if others.cores <= args.max_others:
                    log(f"  {label}: kept (other processes used {others.cores:.2f} cores)")
                    return result
                if time.monotonic() > give_up:  # out of time: keep it, and say so
                    kept_busy.append(f"{label} ({others.cores:.2f} cores)")
                    log(
                        f"  {label}: kept although other processes used {others.cores:.2f} cores (--max-minutes passed)"
                    )
                    return result
                discarded.append(f"{label} ({others.cores:.2f} cores)")
                log(f"  {label}: discarded, other processes used {others.cores:.2f} cores; waiting 20 s")
                time.sleep(20)

        for round_no in range(1, args.rounds + 1):
            for name, _ in variants:
                base = servers[name].base

                def service_slice(base: str = base) -> dict[str, Any]:
                    result: dict[str, Any] = {}
                    result.update(loadgen.run_workload("W2", base, adapter, {}, plan))
                    result.update(loadgen.run_workload("W4", base, adapter, {}, plan))
                    return result

                result = measure(f"round {round_no} {name}", service_slice)
                runs[name].append(result)
                log(
                    f"    W2 {result['w2_tps']:.1f} tok/s p95 {result['w2_p95']:.2f} s health p99 {result['w2_health_p99']:.1f} ms "
                    f"({result['w2_requests']} done, {result['w2_failed']} failed); W4 {result['w4_rps']:.0f} req/s p99 {result['w4_p99']:.2f} ms"
                )
            for mode in empties:
                base = servers["empty:" + mode].base

                def empty_slice(base: str = base) -> dict[str, Any]:
                    w4: dict[str, Any] = loadgen.w4(
                        base, loadgen.ADAPTERS["empty"], {}, seconds=plan.w4_seconds, connections=plan.clients
                    )
                    return w4

                result = measure(f"round {round_no} empty {mode}", empty_slice)
                empty_runs[mode].append(result)
                log(f"    W4 {result['w4_rps']:.0f} req/s p99 {result['w4_p99']:.2f} ms")
    finally:
        for server in servers.values():
            server.stop()

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    out = [
        f"## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC — HTTP server A/B",
        "",
        f"Commit {commit}. Machine: nproc {os.cpu_count()}, {platform.processor() or platform.machine()}, load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start. Command: `bench/http_ab.py {' '.join(argv or sys.argv[1:])}`. "
        f"Took {(time.time() - started) / 60:.1f} min. Each cell: median (each kept slice); all servers run for the whole session and the slices alternate between them.",
        "",
    ]
    if variants:
        out += table("Service", [n for n, _ in variants], runs, KEYS)
        out += ["", "- " + "; ".join(f"{n}: {folder}" for n, folder in variants)]
        out += ["- A 70 KB request head got: " + ", ".join(f"{n} {heads.get(n)}" for n, _ in variants)]
    out += [
        "- Slices discarded because other processes used more than "
        f"{args.max_others:g} cores meanwhile: " + ("; ".join(discarded) or "none"),
        "- Slices kept although others used more (the time allowed had passed): " + ("; ".join(kept_busy) or "none"),
    ]
    if empties:
        out += ["", *table("Empty app (bench/empty_app.py)", empties, empty_runs, EMPTY_KEYS)]
        out += [
            "",
            "- default: uvicorn's auto protocol (httptools); guarded: service.http.protocol; "
            f"h11: uvicorn's h11 with h11_max_incomplete_event_size=64 KiB. W4: wrk -t1 -c{plan.clients} -d{plan.w4_seconds:g}s.",
        ]
    text = "\n".join(out) + "\n"
    print(text)
    if args.save:
        with RESULTS.open("a") as results:
            results.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
