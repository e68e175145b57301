"""The curl examples of the README and docs/protocols.md give what they show (ids, timestamps and timings
aside), from an app in float32: the precision whose results do not depend on the CPU (bfloat16, the
default where the CPU computes in it, rounds differently with and without AMX). After a change that
moves them, `python tests/openai/regenerate_doc_examples.py` rewrites the documented outputs."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "docs" / "protocols.md"]
_BLOCK = re.compile(r"```bash\n(?P<commands>.*?)```\n```json\n(?P<outputs>.*?)```", re.DOTALL)
_VOLATILE = {"id", "created", "heldout_accuracy", "timing"}  # the digit model may be retrained; timings vary


def _examples() -> list[tuple[str, str, Any, Any]]:
    """(method, path, body or None, documented JSON) for each curl line followed by a JSON output line."""
    examples = []
    for match in (m for doc in DOCS for m in _BLOCK.finditer(doc.read_text())):
        commands = [c for c in match["commands"].replace("\\\n", " ").splitlines() if c.strip().startswith("curl ")]
        outputs = [line for line in match["outputs"].splitlines() if line.strip()]
        if len(commands) != len(outputs):
            continue
        for command, output in zip(commands, outputs):
            args = shlex.split(command)
            url = next(a for a in args if a.startswith("localhost:8000"))
            body = args[args.index("-d") + 1] if "-d" in args else None
            if body is not None and body.startswith("@"):
                continue  # a file made by the example itself
            method = "POST" if body is not None else "GET"
            examples.append((method, url.removeprefix("localhost:8000"), json.loads(body) if body else None, json.loads(output)))
    return examples


EXAMPLES = _examples()


def _same(actual: Any, documented: Any, where: str = "") -> None:
    if isinstance(documented, dict):
        assert isinstance(actual, dict) and set(actual) == set(documented), where
        for key, value in documented.items():
            if key not in _VOLATILE:
                _same(actual[key], value, f"{where}.{key}")
    elif isinstance(documented, list):
        assert isinstance(actual, list) and len(actual) == len(documented), where
        for i, (a, d) in enumerate(zip(actual, documented)):
            _same(a, d, f"{where}[{i}]")
    elif isinstance(documented, float):
        assert actual == pytest.approx(documented, abs=1e-4), where
    else:
        assert actual == documented, where


def test_the_docs_have_examples() -> None:
    paths = {path for _, path, _, _ in EXAMPLES}
    assert {"/v1/models", "/v1/completions", "/v1/chat/completions", "/v2/models/mnist", "/v2/models/mnist/infer"} <= paths
    assert {"/tokenize", "/detokenize", "/next-token-probs", "/generate"} <= paths  # the README's own


@pytest.mark.parametrize(("method", "path", "body", "documented"), EXAMPLES, ids=[f"{m} {p} {i}" for i, (m, p, _, _) in enumerate(EXAMPLES)])
async def test_doc_example(client: httpx.AsyncClient, method: str, path: str, body: Any, documented: Any) -> None:
    response = await client.request(method, path, json=body)
    _same(response.json(), documented)
