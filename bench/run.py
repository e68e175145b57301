"""Benchmark runner: start each server in turn on a free localhost port, run the workloads, print one table.

    .venv/bin/python bench/run.py                      # everything; appends the table to bench/RESULTS.md
    .venv/bin/python bench/run.py --quick              # smoke run: short durations, printed only
    .venv/bin/python bench/run.py --servers service,llama --workloads W2,W3

Servers (in this order):
  service      this service: `python -m service serve` (settings from the GENAI_* environment)
  per_request  bench/baselines/per_request.py: `model.generate` per request, FastAPI sync endpoints
  naive        bench/baselines/naive_loop.py: the course notebook's loop (full forward per token, no KV cache)
  llama        llama.cpp's llama-server on the same GGUF, `-np 8 -cb -t 2` (build: bench/build_llama_server.sh;
               another binary: LLAMA_SERVER=/path/to/llama-server); W1-W4
  llama32      the same with `-np 32`, for W5 only (32 clients; 8 slots would queue the rest)
  empty        bench/empty_app.py: one empty FastAPI POST route, the W4 ceiling (added whenever W4 runs)

A server that cannot start (llama-server not built, a crash at start-up) is skipped with a note; a
workload that fails is noted in its cell; the run goes on. Server logs go to .cache/bench-logs/.
See bench/README.md for what each workload measures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import loadgen
from machine import free_port, git_commit, machine_info

PYTHON = sys.executable
LLAMA_SERVER = ROOT / ".cache" / "llama.cpp" / "build" / "bin" / "llama-server"
LOG_DIR = ROOT / ".cache" / "bench-logs"
RESULTS = ROOT / "bench" / "RESULTS.md"
ALL_SERVERS = ["service", "per_request", "naive", "llama", "llama32", "empty"]
ALL_WORKLOADS = ["W1", "W2", "W3", "W4", "W5"]


class Skip(Exception):
    """The server cannot be run here; the message says why and what to do."""


@dataclass
class ServerSpec:
    name: str
    command: Callable[[int], list[str]]
    ready_path: str
    adapter: str
    workloads: set[str] = field(default_factory=lambda: set(ALL_WORKLOADS))
    ttft: str = ""


def _embedded_gguf() -> str:
    sys.path.insert(0, str(ROOT))
    from service.language.loading import ModelLoadError, embedded_gguf_path

    try:
        return str(embedded_gguf_path())
    except ModelLoadError as exc:
        raise Skip(str(exc)) from exc


def _llama_command(port: int, slots: int = 8) -> list[str]:
    binary = Path(os.environ.get("LLAMA_SERVER", LLAMA_SERVER))
    if not os.access(binary, os.X_OK):
        raise Skip(f"llama-server not built ({binary} missing): run bench/build_llama_server.sh (~15 min)")
    return [
        str(binary),
        "-m",
        _embedded_gguf(),
        "-np",
        str(slots),
        "-cb",
        "-t",
        "2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


SERVERS: dict[str, ServerSpec] = {
    "service": ServerSpec(
        "service",
        lambda port: [PYTHON, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)],
        "/ready",
        "genai",
        ttft="client-measured, streamed",
    ),
    "per_request": ServerSpec(
        "per_request",
        lambda port: [PYTHON, "bench/baselines/per_request.py", "--port", str(port)],
        "/ready",
        "genai-nostream",
        {"W1", "W2", "W3", "W4"},
        ttft="server-reported (no streaming)",
    ),
    "naive": ServerSpec(
        "naive",
        lambda port: [PYTHON, "bench/baselines/naive_loop.py", "--port", str(port)],
        "/ready",
        "genai-nostream",
        {"W1", "W2", "W3", "W4"},
        ttft="server-reported (no streaming)",
    ),
    "llama": ServerSpec(
        "llama", _llama_command, "/health", "llama", {"W1", "W2", "W3", "W4"}, ttft="client-measured, streamed"
    ),
    # W5's 32 clients: llama-server's 8 slots would queue the rest, so it gets one slot per client.
    "llama32": ServerSpec(
        "llama32", lambda port: _llama_command(port, slots=32), "/health", "llama", {"W5"}, "client-measured, streamed"
    ),
    "empty": ServerSpec(
        "empty", lambda port: [PYTHON, "bench/empty_app.py", "--port", str(port)], "/health", "empty", {"W4"}
    ),
}


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


class RunningServer:
    def __init__(self, spec: ServerSpec, ready_timeout: float) -> None:
        self.spec = spec
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        command = spec.command(self.port)  # may raise Skip
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{spec.name}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        self._log = self.log_path.open("w")
        log(f"{spec.name}: starting on port {self.port}: {' '.join(command)}")
        started = time.perf_counter()
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise
        self.ready_seconds = time.perf_counter() - started
        log(f"{spec.name}: ready in {self.ready_seconds:.1f} s")

    def _tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-3:])[-400:]

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise Skip(
                    f"exited with code {self.process.returncode} before ready (log {self.log_path.relative_to(ROOT)}: {self._tail()})"
                )
            try:
                if httpx.get(self.base_url + self.spec.ready_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise Skip(f"not ready after {timeout:.0f} s (log {self.log_path.relative_to(ROOT)})")

    def stop(self) -> None:
        if self.process.poll() is None:
            for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.process.pid, sig)  # the group this runner started (start_new_session)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log.close()


# --------------------------------------------------------------------------------------------
# The table


@dataclass
class Row:
    key: str
    label: str
    fmt: str
    ratios: tuple[str, ...] = ()  # other servers the service is divided by on this row
    target: str = ""  # text; checked in `_verdict`


ROWS = [
    Row(
        "w1_tps",
        "W1 tokens/s (1 client, {w1_tokens} tokens, median of {w1_runs})",
        "{:.1f}",
        ("per_request",),
        ">=2x per_request",
    ),
    Row(
        "w2_tps",
        "W2 aggregate tokens/s ({clients} clients, {w2_tokens}-token requests)",
        "{:.1f}",
        ("llama",),
        ">=1.0x llama",
    ),
    Row("w2_p50", "W2 latency p50 (s)", "{:.2f}"),
    Row("w2_p95", "W2 latency p95 (s)", "{:.2f}", ("llama",), "<=1.0x llama"),
    Row("w2_ttft_p50", "W2 time to first token p50 (s)", "{:.3f}"),
    Row("w2_ttft_p95", "W2 time to first token p95 (s)", "{:.3f}"),
    Row("w2_health_p99", "W2 /health p99 meanwhile (ms)", "{:.1f}", (), "<50 ms"),
    Row("w2_requests", "W2 requests done (failed)", "{}"),
    Row("w2_rss_mib", "Resident memory after W2: VmRSS (MiB)", "{:.0f}", ("llama",), "<=512 MiB, <=1.5x llama"),
    Row("w2_hwm_mib", "Resident memory after W2: VmHWM, the peak (MiB)", "{:.0f}", ("llama",)),
    Row(
        "w5_tps",
        "W5 aggregate tokens/s ({w5_clients} clients, {w2_tokens}-token requests; llama32: -np 32)",
        "{:.1f}",
        ("llama32",),
        ">=2.0x llama32",
    ),
    Row("w5_p50", "W5 latency p50 (s)", "{:.2f}"),
    Row("w5_p95", "W5 latency p95 (s)", "{:.2f}", ("llama32",)),
    Row("w5_ttft_p50", "W5 time to first token p50 (s)", "{:.3f}"),
    Row("w5_requests", "W5 requests done (failed)", "{}"),
    Row("w3_rps", "W3 next-token top-5 req/s ({clients} clients)", "{:.2f}", ("llama",), ">=2x llama"),
    Row("w3_p50", "W3 latency p50 (ms)", "{:.0f}"),
    Row("w3_p95", "W3 latency p95 (ms)", "{:.0f}"),
    Row(
        "w4_rps",
        "W4 tokenize 1 KB req/s (wrk, {clients} connections; empty: its empty route)",
        "{:.0f}",
        ("empty", "llama"),
        ">=0.8x empty, >=1.0x llama",
    ),
    Row("w4_p50", "W4 latency p50 (ms)", "{:.2f}"),
    Row("w4_p99", "W4 latency p99 (ms)", "{:.2f}"),
]
RATIO_COLUMNS = ["llama", "llama32", "per_request", "empty"]
FAILED_KEY = {"w2_requests": "w2_failed", "w5_requests": "w5_failed"}
WORKLOAD_OF = {row.key: row.key[:2].upper() for row in ROWS}


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and value == value:  # not NaN
        return float(value)
    return None


def _cell(results: dict[str, Any], row: Row, server: str) -> str:
    entry = results.get(server)
    if entry is None:
        return "—"
    if "skip" in entry:
        return "skipped"
    workload = WORKLOAD_OF[row.key]
    if workload in entry.get("errors", {}):
        return "error"
    values = entry.get("values", {})
    if row.key not in values:
        return "—"
    value = values[row.key]
    if row.key in FAILED_KEY:
        return f"{value} ({values.get(FAILED_KEY[row.key], 0)})"
    number = _number(value)
    return row.fmt.format(number) if number is not None else "n/a"


def _ratio(results: dict[str, Any], key: str, other: str) -> float | None:
    a = _number(results.get("service", {}).get("values", {}).get(key))
    b = _number(results.get(other, {}).get("values", {}).get(key))
    return a / b if a is not None and b else None


def _verdict(results: dict[str, Any], row: Row) -> str:
    if not row.target:
        return ""
    if row.key == "w2_health_p99":
        value = _number(results.get("service", {}).get("values", {}).get(row.key))
        return "" if value is None else f"{row.target}: {'met' if value < 50 else 'missed'}"
    parts = []
    for clause in row.target.split(", "):
        if clause.endswith(" MiB"):  # an absolute bound on the service's own figure
            value = _number(results.get("service", {}).get("values", {}).get(row.key))
            bound = float(clause[2:-4])
            parts.append(f"{clause}: n/a" if value is None else f"{clause}: {'met' if value <= bound else 'missed'}")
            continue
        op, rest = clause[:2], clause[2:]
        factor_text, other = rest.split("x ")
        ratio = _ratio(results, row.key, other)
        if ratio is None:
            parts.append(f"{clause}: n/a")
            continue
        met = ratio >= float(factor_text) if op == ">=" else ratio <= float(factor_text)
        parts.append(f"{clause}: {'met' if met else 'missed'}")
    return "; ".join(parts)


def render_table(results: dict[str, Any], servers: list[str], plan: loadgen.Plan) -> str:
    ratio_columns = [o for o in RATIO_COLUMNS if "service" in servers and o in servers]
    with_target = "service" in servers
    header = [
        "Metric",
        *servers,
        *(f"service/{o}" for o in ratio_columns),
        *(["Target (service)"] if with_target else []),
    ]
    aligns = ["---"] + ["---:"] * (len(servers) + len(ratio_columns)) + (["---"] if with_target else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(aligns) + "|"]
    ran = {w for entry in results.values() for w in entry.get("workloads", [])}
    for row in ROWS:
        if WORKLOAD_OF[row.key] not in ran:
            continue
        cells = [row.label.format(**vars(plan)), *(_cell(results, row, s) for s in servers)]
        for other in ratio_columns:
            ratio = _ratio(results, row.key, other) if other in row.ratios else None
            cells.append(f"{ratio:.2f}x" if ratio is not None else "")
        if with_target:
            cells.append(_verdict(results, row))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_notes(
    results: dict[str, Any], servers: list[str], plan: loadgen.Plan, args: argparse.Namespace
) -> list[str]:
    notes = []
    for server in servers:
        entry = results.get(server, {})
        if "skip" in entry:
            notes.append(f"{server} skipped: {entry['skip']}")
        for workload, message in entry.get("errors", {}).items():
            notes.append(f"{server} {workload} error: {message}")
        values = entry.get("values", {})
        for key in ("w2_note", "w3_note", "w4_note"):
            if values.get(key):
                notes.append(f"{server} {key[:2].upper()}: {values[key]}")
        if "ready_seconds" in entry:
            notes.append(f"{server}: ready {entry['ready_seconds']:.1f} s after start")
    ttft = [
        f"{s}: {SERVERS[s].ttft}"
        for s in servers
        if SERVERS[s].ttft and "w2_ttft_p50" in results.get(s, {}).get("values", {})
    ]
    if ttft:
        notes.append("Time to first token — " + "; ".join(ttft) + ". Latency is client-measured for every server.")
    service_values = results.get("service", {}).get("values", {})
    if service_values.get("w3_prompt_tokens"):
        notes.append(f"W3 prompt: {service_values['w3_prompt_tokens']} tokens.")
    body_tokens = next(
        (
            results[s]["values"]["w4_body_tokens"]
            for s in servers
            if results.get(s, {}).get("values", {}).get("w4_body_tokens")
        ),
        None,
    )
    if body_tokens:
        notes.append(f"W4 body: {len(loadgen.W4_TEXT)} characters of English = {body_tokens} tokens.")
    if "llama" in servers:
        notes.append(
            f"llama-server asked with cache_prompt={'true' if args.llama_cache_prompt else 'false'} "
            "(false: it recomputes every prompt, as the service does)."
        )
    ran = {w for s in servers for w in results.get(s, {}).get("workloads", [])}
    durations = {
        "W1": f"W1 {plan.w1_runs} run(s) of {plan.w1_tokens} tokens",
        "W2": f"W2 {plan.w2_seconds:g} s of {plan.w2_tokens}-token requests",
        "W3": f"W3 {plan.w3_seconds:g} s",
        "W4": f"W4 {plan.w4_seconds:g} s (wrk -t{plan.wrk_threads} -c{plan.clients})",
        "W5": f"W5 {plan.w2_seconds:g} s of {plan.w2_tokens}-token requests from {plan.w5_clients} clients",
    }
    notes.append(
        "Durations: " + "; ".join(text for w, text in durations.items() if w in ran) + f"; {plan.clients} clients. "
        "Clients start no request after the duration; rates count what completed, up to the last completion."
    )
    genai = {k: v for k, v in sorted(os.environ.items()) if k.startswith("GENAI_") and k != "GENAI_API_KEYS"}
    notes.append(
        "Settings: " + (", ".join(f"{k}={v}" for k, v in genai.items()) if genai else "defaults (no GENAI_* set)") + "."
    )
    return notes


def resident_memory(pid: int, prefix: str) -> dict[str, float]:
    """The server process's VmRSS and VmHWM (its peak) in MiB, from /proc (Linux); empty elsewhere."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    kib = {name: float(fields[name].split()[0]) for name in ("VmRSS", "VmHWM") if name in fields}
    return {f"{prefix}_{name[2:].lower()}_mib": value / 1024 for name, value in kib.items()}


def run_server(
    name: str, workloads: list[str], plan: loadgen.Plan, args: argparse.Namespace, headers: dict[str, str]
) -> dict[str, Any]:
    spec = SERVERS[name]
    todo = [w for w in workloads if w in spec.workloads]
    entry: dict[str, Any] = {"values": {}, "errors": {}, "workloads": todo}
    if not todo:
        return entry
    try:
        server = RunningServer(spec, args.ready_timeout)
    except Skip as exc:
        log(f"{name}: skipped: {exc}")
        return {"skip": str(exc), "workloads": todo}
    except Exception as exc:
        log(f"{name}: could not start: {exc!r}")
        return {"skip": f"could not start: {type(exc).__name__}: {exc}", "workloads": todo}
    entry["ready_seconds"] = server.ready_seconds
    adapter = (
        loadgen.llama_adapter(args.llama_cache_prompt) if spec.adapter == "llama" else loadgen.ADAPTERS[spec.adapter]
    )
    try:
        for workload in todo:
            log(f"{name}: {workload} …")
            started = time.perf_counter()
            try:
                values = loadgen.run_workload(
                    workload, server.base_url, adapter, headers if name == "service" else {}, plan
                )
                entry["values"].update(values)
                if workload == "W2":
                    entry["values"].update(resident_memory(server.process.pid, "w2"))
                shown = {
                    k: (round(v, 3) if isinstance(v, float) else v)
                    for k, v in values.items()
                    if not isinstance(v, list)
                }
                log(
                    f"{name}: {workload} done in {time.perf_counter() - started:.0f} s: {json.dumps(shown, default=str)}"
                )
            except Exception as exc:
                entry["errors"][workload] = f"{type(exc).__name__}: {str(exc)[:300]}"
                log(f"{name}: {workload} failed: {exc!r}\n{traceback.format_exc(limit=3)}")
            if server.process.poll() is not None:
                entry["errors"].setdefault("server", f"exited with code {server.process.returncode} during {workload}")
                break
    finally:
        server.stop()
        log(f"{name}: stopped")
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="short durations for a smoke run (not saved unless --save)"
    )
    parser.add_argument(
        "--servers", default=",".join(ALL_SERVERS), help=f"comma-separated, from {','.join(ALL_SERVERS)}"
    )
    parser.add_argument("--workloads", default=",".join(ALL_WORKLOADS), help="comma-separated, from W1,W2,W3,W4,W5")
    parser.add_argument("--save", action="store_true", help="append to the results file even with --quick")
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="file the table is appended to (default bench/RESULTS.md)"
    )
    parser.add_argument("--ready-timeout", type=float, default=900, help="seconds to wait for a server to be ready")
    parser.add_argument(
        "--llama-cache-prompt", action="store_true", help="let llama-server reuse cached prompt prefixes"
    )
    for name in ("w1_runs", "w1_tokens", "w2_tokens", "clients", "w5_clients", "wrk_threads"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    for name in ("w2_seconds", "w3_seconds", "w4_seconds"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=None)
    args = parser.parse_args(argv)

    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    unknown = [s for s in servers if s not in SERVERS] + [w for w in workloads if w not in ALL_WORKLOADS]
    if unknown:
        parser.error(f"unknown server or workload: {', '.join(unknown)}")
    if "W4" in workloads and "empty" not in servers:
        servers.append("empty")  # W4's ceiling
    servers = [s for s in ALL_SERVERS if s in servers]
    plan = loadgen.Plan.quick() if args.quick else loadgen.Plan()
    for name in (
        "w1_runs",
        "w1_tokens",
        "w2_tokens",
        "clients",
        "w5_clients",
        "wrk_threads",
        "w2_seconds",
        "w3_seconds",
        "w4_seconds",
    ):
        if getattr(args, name) is not None:
            setattr(plan, name, getattr(args, name))
    keys = os.environ.get("GENAI_API_KEYS", "").strip()
    first_key = (json.loads(keys)[0] if keys.startswith("[") else keys.split(",")[0].strip()) if keys else ""
    headers = {"Authorization": f"Bearer {first_key}"} if first_key else {}

    started_at = datetime.now(UTC)
    machine = machine_info()
    commit = git_commit()
    results: dict[str, Any] = {}
    try:
        for name in servers:
            results[name] = run_server(name, workloads, plan, args, headers)
            time.sleep(2)  # let the machine settle between servers
    except KeyboardInterrupt:
        log("interrupted: printing what was measured")

    kind = "quick smoke run (shortened durations: not comparable with full runs)" if args.quick else "full run"
    table = render_table(results, servers, plan)
    notes = render_notes(results, servers, plan, args)
    command = "bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = "\n".join(
        [
            f"## {started_at:%Y-%m-%d %H:%M} UTC — {kind}",
            "",
            f"Commit {commit}. Machine: {machine}. Command: `{command.strip()}`. "
            f"Took {(datetime.now(UTC) - started_at).total_seconds() / 60:.1f} min.",
            "",
            table,
            "",
            *(f"- {n}" for n in notes),
            "",
        ]
    )
    print(report)
    if (not args.quick or args.save) and not args.no_save:
        new = not args.results.exists()
        with args.results.open("a") as out:
            if new:
                out.write("# Benchmark results\n\nAppended by `bench/run.py` (see bench/README.md). Newest last.\n\n")
            out.write(report + "\n")
        log(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
