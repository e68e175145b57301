"""The curl examples of docs/inspect.md give what they show, from the float32 app on the embedded model
(float32: its results do not depend on the CPU). After a change that moves them,

    .venv/bin/python tests/inspect/test_inspect_docs.py

rewrites the documented outputs from the same app."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "inspect.md"
BLOCK = re.compile(r"```bash\n(?P<command>curl .*?)```\n```json\n(?P<output>.*?)```\n", re.DOTALL)


def examples(text: str) -> list[tuple[re.Match[str], str, dict[str, Any]]]:
    """(match, path, body) for each curl block followed by its JSON output block."""
    found = []
    for match in BLOCK.finditer(text):
        args = shlex.split(match["command"].replace("\\\n", " "))
        url = next(a for a in args if a.startswith("localhost:8000"))
        found.append((match, url.removeprefix("localhost:8000"), json.loads(args[args.index("-d") + 1])))
    return found


def same(actual: Any, documented: Any, where: str = "") -> None:
    if isinstance(documented, dict):
        assert isinstance(actual, dict) and set(actual) == set(documented), where
        for key, value in documented.items():
            same(actual[key], value, f"{where}.{key}")
    elif isinstance(documented, list):
        assert isinstance(actual, list) and len(actual) == len(documented), where
        for i, (a, d) in enumerate(zip(actual, documented, strict=True)):
            same(a, d, f"{where}[{i}]")
    elif isinstance(documented, float):
        assert actual == pytest.approx(documented, abs=1e-4), where
    else:
        assert actual == documented, where


EXAMPLES = examples(DOC.read_text())


def test_every_endpoint_has_an_example() -> None:
    assert {path for _, path, _ in EXAMPLES} == {"/inspect/logit-lens", "/inspect/attention", "/inspect/tree"}


@pytest.mark.parametrize(("index"), range(len(EXAMPLES)), ids=[path for _, path, _ in EXAMPLES])
async def test_doc_example(client: httpx.AsyncClient, index: int) -> None:
    match, path, body = EXAMPLES[index]
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    same(response.json(), json.loads(match["output"]))


async def _regenerate() -> None:
    from service.app import create_app, load_models
    from service.config import Settings

    settings = Settings(dtype="float32", weights="dense")  # what the doc tests run: the session app
    app = create_app(settings, models=load_models(settings))
    text = DOC.read_text()
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://docs", timeout=120) as client,
    ):
        for match, path, body in reversed(examples(text)):
            fresh = (await client.post(path, json=body)).json()
            start, end = match.span("output")
            text = text[:start] + json.dumps(fresh, ensure_ascii=False, separators=(",", ":")) + "\n" + text[end:]
    DOC.write_text(text)


if __name__ == "__main__":
    import asyncio

    sys.path.insert(0, str(ROOT))
    asyncio.run(_regenerate())
