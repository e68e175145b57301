"""Every example in README.md and docs/*.md gives what it shows, from an app in float32: the precision whose
results do not depend on the CPU (bfloat16, the default where the CPU computes in it, rounds differently with
and without AMX). Ids, timestamps and timings are not compared. After a change that moves them,
`python tests/openai/regenerate_doc_examples.py` rewrites the documented outputs.

An example is a ```bash block followed at once by its ```json or ```text output, a ```console block
(`$ command` lines, each followed by its output), or a ```python block followed by its ```text output.
Each `curl` is run in process against the app as curl would send it (method, headers, `-d` body or file,
`-F` upload); what follows it in a pipe (`| grep ...`, `| python3 -c ...`) runs in bash on the response, as
in a terminal; `python3 -c '...' > file` lines run first; a `GENAI_X=value make serve` line gives the app
those settings. Python examples run in a subprocess against a real socket. A block that cannot be run says
why in a `<!-- doc-example: not run (...) -->` comment just before it; any other block must run.
"""

from __future__ import annotations

import json
import math
import mimetypes
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
VOLATILE = {
    "id",
    "created",
    "heldout_accuracy",
    "timing",
}  # per call, per machine, or per retraining of the digit model
NOT_RUN = "<!-- doc-example: not run"
COMMAND_LANGS = {"bash", "console", "python"}
OUTPUT_LANGS = {"json", "text"}
_FENCE = re.compile(r"^```(?P<lang>[\w-]*)[ \t]*\n(?P<body>.*?)^```[ \t]*$\n?", re.DOTALL | re.MULTILINE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


# ---- what an example is ---------------------------------------------------------------------------------


@dataclass
class Curl:
    """One curl command line, as curl would send it, and the pipe its output goes through."""

    method: str
    path: str
    headers: dict[str, str]
    data: str | None = None
    forms: list[tuple[str, str]] = field(default_factory=list)
    include_headers: bool = False
    pipe: str | None = None  # the rest of the pipeline, run in bash on curl's output
    producer: str | None = None  # a command whose output is curl's stdin (`-d @-`)


@dataclass
class Output:
    """A documented output and where it is in its file; `curls` are the indices of the curls that print it."""

    curls: list[int]
    documented: str
    start: int
    end: int
    kind: str  # "json": one JSON line per curl; "text": the text, numbers compared to 1e-4; "sse": events


@dataclass
class Example:
    doc: Path
    line: int
    steps: list[Curl | str] = field(default_factory=list)  # curls, and shell lines that write files they read
    settings: dict[str, str] = field(default_factory=dict)
    python: str | None = None
    outputs: list[Output] = field(default_factory=list)
    problem: str | None = None  # why it cannot be run

    @property
    def name(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    @property
    def curls(self) -> list[Curl]:
        return [s for s in self.steps if isinstance(s, Curl)]


def _split_unquoted(text: str, separators: str) -> list[str]:
    """Split at separators outside quotes; a backslash-newline joins lines, and `#` outside quotes starts a comment."""
    parts, current, quote, i = [], [], None, 0
    while i < len(text):
        ch = text[i]
        if quote:
            current.append(ch)
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            current.append(ch)
        elif ch == "\\" and text[i + 1 : i + 2] == "\n":
            current.append(" ")
            i += 1
        elif ch == "#" and (not current or current[-1].isspace()) and "\n" in separators:
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        elif ch in separators:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _parse_curl(command: str) -> Curl:
    args = shlex.split(command)
    assert args[0] == "curl"
    curl = Curl(method="", path="", headers={})
    i = 1
    while i < len(args):
        arg = args[i]
        if arg.startswith(("localhost:8000", "http://localhost:8000")):
            curl.path = arg.split("localhost:8000", 1)[1] or "/"
        elif arg in ("-H", "--header"):
            name, _, value = args[i + 1].partition(":")
            curl.headers[name.strip()] = value.strip()
            i += 1
        elif arg in ("-d", "--data"):
            curl.data = args[i + 1]
            i += 1
        elif arg in ("-F", "--form"):
            name, _, value = args[i + 1].partition("=")
            curl.forms.append((name, value))
            i += 1
        elif arg in ("-X", "--request"):
            curl.method = args[i + 1]
            i += 1
        elif re.fullmatch(r"-[sSNi]+", arg):
            curl.include_headers |= "i" in arg
        else:
            raise ValueError(f"curl option {arg!r} is not emulated")
        i += 1
    if not curl.path:
        raise ValueError("curl without a localhost:8000 URL")
    curl.method = curl.method or ("POST" if curl.data is not None or curl.forms else "GET")
    return curl


def _parse_command(command: str, example: Example) -> None:
    """One shell command of an example: a curl (maybe in a pipeline), a file-writing python3 line, or settings."""
    stages = _split_unquoted(command, "|")
    first = shlex.split(stages[0])
    if re.fullmatch(r"(GENAI_[A-Z0-9_]+=\S*\s+)+make serve", command):
        for assignment in first[:-2]:
            name, _, value = assignment.partition("=")
            example.settings[name.removeprefix("GENAI_").lower()] = value
    elif first[0] == "curl":
        curl = _parse_curl(stages[0])
        curl.pipe = " | ".join(stages[1:]) or None
        example.steps.append(curl)
    elif first[:2] == ["python3", "-c"] and len(stages) > 1 and stages[1].startswith("curl "):
        curl = _parse_curl(stages[1])
        curl.producer = stages[0]
        curl.pipe = " | ".join(stages[2:]) or None
        example.steps.append(curl)
    elif first[:2] == ["python3", "-c"] and len(stages) == 1 and ">" in first:
        example.steps.append(command)
    else:
        raise ValueError(f"cannot run {command[:60]!r}")


def _lines_with_offsets(body: str, start: int) -> list[tuple[str, int, int]]:
    out, offset = [], start
    for line in body.splitlines(keepends=True):
        if line.strip():
            out.append((line.rstrip("\n"), offset, offset + len(line)))
        offset += len(line)
    return out


def _shell_example(doc: Path, line: int, script: str, output_lang: str, output: re.Match[str]) -> Example:
    example = Example(doc, line)
    try:
        for command in _split_unquoted(script, "\n"):
            _parse_command(command, example)
        curls = example.curls
        if not curls:
            raise ValueError("no curl")
        body, start = output["body"], output.start("body")
        if output_lang == "json":
            lines = _lines_with_offsets(body, start)
            if len(lines) != len(curls):
                raise ValueError(f"{len(curls)} curls but {len(lines)} output lines")
            example.outputs = [Output([i], text, s, e, "json") for i, (text, s, e) in enumerate(lines)]
        else:
            sse = len(curls) == 1 and re.search(r"^(data|event): ", body, re.MULTILINE) is not None
            example.outputs = [
                Output(list(range(len(curls))), body, start, start + len(body), "sse" if sse else "text")
            ]
    except ValueError as exc:
        example.problem = str(exc)
    return example


def _console_example(doc: Path, line: int, body: str, start: int) -> Example:
    """`$ command` lines (continued with a trailing backslash), each followed by what it printed."""
    example = Example(doc, line)
    lines = body.splitlines(keepends=True)
    offset, i = start, 0
    try:
        while i < len(lines):
            if not lines[i].startswith("$ "):
                raise ValueError(f"output without a command: {lines[i][:40]!r}")
            command = lines[i][2:]
            offset += len(lines[i])
            i += 1
            while command.rstrip().endswith("\\") and i < len(lines):
                command += lines[i]
                offset += len(lines[i])
                i += 1
            out_start = offset
            while i < len(lines) and not lines[i].startswith("$ "):
                offset += len(lines[i])
                i += 1
            if command.strip().startswith("#"):
                continue
            before = len(example.curls)
            _parse_command(" ".join(_split_unquoted(command, "\n")), example)
            if len(example.curls) > before:
                text = body[out_start - start : offset - start]
                kind = "json" if _is_json(text.strip()) and len(text.strip().splitlines()) == 1 else "text"
                example.outputs.append(Output([before], text, out_start, offset, kind))
        if not example.curls:
            raise ValueError("no curl")
    except ValueError as exc:
        example.problem = str(exc)
    return example


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _exempt(text: str, fence_start: int) -> bool:
    before = text[:fence_start].rstrip().rsplit("\n", 1)[-1]
    return before.startswith(NOT_RUN)


def collect(docs: list[Path] = DOCS) -> tuple[list[Example], list[str]]:
    """The examples of the docs, and the names of the blocks exempted from running."""
    examples: list[Example] = []
    exempted: list[str] = []
    for doc in docs:
        text = doc.read_text()
        fences = list(_FENCE.finditer(text))
        for i, fence in enumerate(fences):
            lang = fence["lang"]
            nxt = fences[i + 1] if i + 1 < len(fences) else None
            paired = nxt is not None and nxt["lang"] in OUTPUT_LANGS and not text[fence.end() : nxt.start()].strip()
            is_example = lang == "console" or (lang in COMMAND_LANGS and paired)
            if not is_example:
                continue
            line = text.count("\n", 0, fence.start()) + 1
            if _exempt(text, fence.start()):
                exempted.append(f"{doc.relative_to(ROOT)}:{line}")
                continue
            if lang == "console":
                examples.append(_console_example(doc, line, fence["body"], fence.start("body")))
            elif lang == "python":
                assert nxt is not None
                body, start = nxt["body"], nxt.start("body")
                examples.append(
                    Example(
                        doc, line, python=fence["body"], outputs=[Output([0], body, start, start + len(body), "text")]
                    )
                )
            else:
                assert nxt is not None
                examples.append(_shell_example(doc, line, fence["body"], nxt["lang"], nxt))
    return examples, exempted


# ---- running them ---------------------------------------------------------------------------------------


def _bash(command: str, cwd: Path, stdin: str = "") -> str:
    """A documented shell line, with `python3` this interpreter (the docs' python3 needs only the standard library)."""
    bin_dir = cwd / ".bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        (bin_dir / "python3").symlink_to(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        ["bash", "-c", command], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert done.returncode in (0, 1), f"{command[:80]!r} failed: {done.stderr}"  # grep answers 1 when nothing matched
    return done.stdout


async def _send(curl: Curl, client: httpx.AsyncClient, cwd: Path) -> str:
    headers = dict(curl.headers)
    content: bytes | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    if curl.data is not None:
        if curl.data == "@-":
            assert curl.producer is not None, "-d @- without a command before the pipe"
            raw = _bash(curl.producer, cwd)
        elif curl.data.startswith("@"):
            raw = (cwd / curl.data[1:]).read_text()
        else:
            raw = curl.data
        content = (
            raw.replace("\r", "").replace("\n", "") if curl.data.startswith("@") else raw
        ).encode()  # curl drops newlines of -d @file
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/x-www-form-urlencoded"  # what curl sends with -d
    if curl.forms:
        files = []
        for name, value in curl.forms:
            assert value.startswith("@"), "only -F name=@file is emulated"
            path = ROOT / value[1:]
            files.append(
                (name, (path.name, path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream"))
            )
    response = await client.request(curl.method, curl.path, content=content, headers=headers, files=files)
    text = response.text
    if curl.include_headers:
        head = f"HTTP/1.1 {response.status_code} {response.reason_phrase}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in response.headers.multi_items())
        text = head + "\r\n" + text
    if curl.pipe is not None:
        text = _bash(curl.pipe, cwd, text)
    return text


async def run_shell(example: Example, client: httpx.AsyncClient) -> list[str]:
    """What each curl of the example prints, in order."""
    printed: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        for step in example.steps:
            if isinstance(step, str):
                _bash(step, cwd)
            else:
                printed.append(await _send(step, client, cwd))
    return printed


def run_python(example: Example, base_url: str) -> list[str]:
    assert example.python is not None
    code = example.python.replace("http://localhost:8000", base_url).replace(
        "localhost:8000", base_url.removeprefix("http://")
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return [done.stdout]


# ---- comparing ------------------------------------------------------------------------------------------


def same(actual: Any, documented: Any, where: str = "") -> None:
    """Equal but for the volatile keys; floats to 1e-4."""
    if isinstance(documented, dict):
        assert isinstance(actual, dict) and set(actual) == set(documented), (
            f"{where}: keys {sorted(actual) if isinstance(actual, dict) else actual!r}"
        )
        for key, value in documented.items():
            if key not in VOLATILE:
                same(actual[key], value, f"{where}.{key}")
    elif isinstance(documented, list):
        assert isinstance(actual, list) and len(actual) == len(documented), f"{where}: {actual!r}"
        for i, (a, d) in enumerate(zip(actual, documented, strict=True)):
            same(a, d, f"{where}[{i}]")
    elif isinstance(documented, float):
        assert isinstance(actual, (int, float)) and math.isclose(actual, documented, abs_tol=1e-4), (
            f"{where}: {actual!r} != {documented!r}"
        )
    else:
        assert actual == documented, f"{where}: {actual!r} != {documented!r}"


def normalize(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    return "\n".join(lines).strip("\n") + "\n"


def same_text(actual: str, documented: str) -> None:
    """Equal text, numbers to 1e-4."""
    a, d = normalize(actual), normalize(documented)
    assert _NUMBER.split(a) == _NUMBER.split(d), f"got:\n{a}\ndocumented:\n{d}"
    for x, y in zip(_NUMBER.findall(a), _NUMBER.findall(d), strict=True):
        assert math.isclose(float(x), float(y), abs_tol=1e-4), f"{x} != {y}\ngot:\n{a}\ndocumented:\n{d}"


def events(text: str) -> list[tuple[str | None, str]]:
    """Server-Sent Events as (event name, data), comments (`: ping`) left out."""
    found = []
    for block in normalize(text).strip().split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data.append(line.removeprefix("data: "))
        if name is not None or data:
            found.append((name, "\n".join(data)))
    return found


def joined(output: Output, printed: list[str]) -> str:
    """What the output's curls printed, each ending its line (curl -s prints a body as it came)."""
    return "".join(p if p.endswith("\n") else p + "\n" for p in (printed[i] for i in output.curls))


def check(example: Example, printed: list[str]) -> None:
    for output in example.outputs:
        check_output(output, printed)


def check_output(output: Output, printed: list[str]) -> None:
    """The documented output is what its curls printed (volatile keys aside, numbers to 1e-4)."""
    actual = joined(output, printed)
    if output.kind == "json":
        same(json.loads(actual), json.loads(output.documented))
    elif output.kind == "sse":
        got, documented = events(actual), events(output.documented)
        assert [n for n, _ in got] == [n for n, _ in documented], f"events {[n for n, _ in got]}"
        for (_, a), (_, d) in zip(got, documented, strict=True):
            if _is_json(d):
                same(json.loads(a), json.loads(d))
            else:
                assert a == d
    else:
        same_text(actual, output.documented)


# ---- the tests ------------------------------------------------------------------------------------------


EXAMPLES, EXEMPTED = collect()
SHELL_EXAMPLES = [e for e in EXAMPLES if e.python is None]
PYTHON_EXAMPLES = [e for e in EXAMPLES if e.python is not None]


def test_every_example_can_run() -> None:
    problems = [f"{e.name}: {e.problem}" for e in EXAMPLES if e.problem]
    assert not problems, (
        "examples that cannot be run (fix them, or say why in a `<!-- doc-example: not run (...) -->` line before):\n"
        + "\n".join(problems)
    )
    assert len(EXEMPTED) <= 3, f"most examples must run; exempted: {EXEMPTED}"


def test_the_docs_have_examples() -> None:
    paths = {c.path for e in SHELL_EXAMPLES for c in e.curls}
    assert {
        "/v1/models",
        "/v1/completions",
        "/v1/chat/completions",
        "/v2/models/mnist",
        "/v2/models/mnist/infer",
    } <= paths
    assert {
        "/tokenize",
        "/detokenize",
        "/next-token-probs",
        "/generate",
        "/classify-digit",
        "/health",
        "/ready",
        "/info",
        "/metrics",
    } <= paths
    assert {e.doc.name for e in EXAMPLES} >= {
        "README.md",
        "language.md",
        "digits.md",
        "protocols.md",
        "operations.md",
        "configuration.md",
    }
    assert any(o.kind == "sse" for e in EXAMPLES for o in e.outputs), "no streamed example is checked"


def test_readme_has_one_example_per_endpoint() -> None:
    """Each endpoint of the README's table is called by a checked example in the README itself."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## Endpoints", 1)[1].split("\n## ", 1)[0]
    endpoints = re.findall(r"^\| `(GET|POST) (/[^` ]*)`", table, re.MULTILINE)
    assert len(endpoints) >= 15
    called = {(c.method, c.path) for e in SHELL_EXAMPLES if e.doc.name == "README.md" for c in e.curls}
    missing = [f"{m} {p}" for m, p in endpoints if (m, p) not in called]
    assert not missing, f"README endpoints without an example: {missing}"


@pytest.mark.parametrize("example", [e for e in SHELL_EXAMPLES if not e.problem], ids=lambda e: e.name)
async def test_doc_example(
    example: Example, client: httpx.AsyncClient, make_app: Callable[[Settings], Awaitable[FastAPI]]
) -> None:
    if example.settings:
        app = await make_app(Settings(dtype="float32", **example.settings))  # type: ignore[arg-type]
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=120
        ) as own:
            printed = await run_shell(example, own)
    else:
        printed = await run_shell(example, client)
    check(example, printed)


@pytest.mark.parametrize("example", PYTHON_EXAMPLES, ids=lambda e: e.name)
def test_python_doc_example(example: Example, threaded_server: str) -> None:
    check(example, run_python(example, threaded_server))
