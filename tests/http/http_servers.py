"""Real servers for the HTTP-layer tests: `python -m service serve` in a subprocess on a loopback port.

The protocol limits live below the app (service/http/protocol.py), so only a real server shows them.
`guarded_server` runs the defaults with the embedded models, as `make serve` does; `tight_server`
serves only the digit classifier with short deadlines and a small connection bound, so the deadline
tests take seconds.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    base: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kib(self) -> int:
        """VmRSS of the server process, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(extra_env: dict[str, str], ready_timeout: float = 180) -> Server:
    port = free_port()
    env = {**os.environ, "GENAI_HOST": "127.0.0.1", "GENAI_PORT": str(port), **extra_env}
    with tempfile.NamedTemporaryFile(prefix="genai-http-", suffix=".log", delete=False) as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    server = Server(f"http://127.0.0.1:{port}", port, process, Path(log_file.name), env)
    deadline = time.monotonic() + ready_timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.log()}")
        try:
            if httpx.get(f"{server.base}/ready", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_server(server)
            raise RuntimeError(f"server not ready in {ready_timeout} s:\n{server.log()}")
        time.sleep(0.2)


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)
    server.log_path.unlink(missing_ok=True)


TIGHT = {
    "GENAI_LOAD_LANGUAGE_MODEL": "false",
    "GENAI_HTTP_HEADER_TIMEOUT_S": "3",
    "GENAI_HTTP_BODY_TIMEOUT_S": "2",
    "GENAI_HTTP_MAX_CONNECTIONS": "30",
}
