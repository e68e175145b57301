"""Rewrite the documented outputs of every example in README.md and docs/*.md from a float32 app on the
embedded models: what `test_docs_examples.py` then holds them to (it also says what an example is). Run
after a change that moves outputs:

    .venv/bin/python tests/openai/regenerate_doc_examples.py [README.md docs/language.md ...]

float32, because its results do not depend on the CPU: bfloat16 matrix products round differently on
CPUs with and without AMX, so a bfloat16 output written on one machine fails on another. Ids, timestamps
and timings are kept as documented (a quiet machine's timings), not rewritten.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE.parent), str(HERE)]

from test_docs_examples import (  # noqa: E402
    DOCS,
    VOLATILE,
    Example,
    Output,
    check_output,
    collect,
    events,
    joined,
    normalize,
    run_python,
    run_shell,
)

KEPT = VOLATILE - {"heldout_accuracy"}  # a retrained digit model's accuracy is rewritten


def keep_volatile(actual: Any, documented: Any) -> Any:
    if isinstance(actual, dict) and isinstance(documented, dict):
        return {
            k: documented[k] if k in KEPT and k in documented else keep_volatile(v, documented.get(k))
            for k, v in actual.items()
        }
    if isinstance(actual, list) and isinstance(documented, list) and len(actual) == len(documented):
        return [keep_volatile(a, d) for a, d in zip(actual, documented, strict=True)]
    return actual


def _documented_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _event_data(raw: str, documented: str | None) -> str:
    """One JSON text as the service wrote it, or, where volatile keys are kept as documented, re-encoded."""
    try:
        data = json.loads(raw)
    except ValueError:
        return raw
    kept = keep_volatile(data, _documented_json(documented) if documented else None)
    if kept == data:
        return raw
    if '": ' in raw:  # the native stream's json.dumps, with spaces
        return json.dumps(kept)
    return json.dumps(kept, ensure_ascii=False, separators=(",", ":"))


def server_error(printed: list[str]) -> str | None:
    """A 5xx body or a stream's error event in what the curls printed: the code is broken, not the docs."""
    for text in printed:
        if re.search(r"^event: error", text, re.MULTILINE):
            return text[:200]
        for line in text.splitlines():
            try:
                body = json.loads(line.removeprefix("data: "))
            except ValueError:
                continue
            error = body.get("error") if isinstance(body, dict) else None
            if isinstance(error, dict) and isinstance(error.get("code"), int) and error["code"] >= 500:
                return line[:200]
    return None


def holds(output: Output, printed: list[str]) -> bool:
    try:
        check_output(output, printed)
    except AssertionError:
        return False
    return True


def render(output: Output, printed: list[str]) -> str:
    """The fresh output, ending as the documented one did (a console output keeps its blank line after)."""
    trail = output.documented[len(output.documented.rstrip("\n")) :] or "\n"
    return _render(output, printed).rstrip("\n") + trail


def _render(output: Output, printed: list[str]) -> str:
    actual = joined(output, printed)
    if output.kind == "json":
        return _event_data(actual.strip(), output.documented) + "\n"  # as the service wrote it, volatile keys kept
    if output.kind == "sse":
        documented = events(output.documented)
        blocks = []
        for i, (name, raw) in enumerate(events(actual)):
            lines = [f"event: {name}"] if name is not None else []
            lines.append(f"data: {_event_data(raw, documented[i][1] if i < len(documented) else None)}")
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks) + "\n"
    return str(normalize(actual))


async def regenerate(docs: list[Path]) -> None:
    import httpx
    from servers import serve_in_thread

    from service.app import create_app, load_models
    from service.config import Settings

    settings = Settings(dtype="float32", weights="dense")  # what the doc tests run: the session app
    models = load_models(settings)
    examples, _ = collect(docs)
    broken = [f"{e.name}: {e.problem}" for e in examples if e.problem]
    if broken:
        sys.exit("cannot run:\n" + "\n".join(broken))

    async def printed_by(example: Example, base: httpx.AsyncClient, url: str) -> list[str]:
        printed: list[str]
        if example.python is not None:
            printed = await asyncio.to_thread(run_python, example, url)
            return printed
        if not example.settings:
            printed = await run_shell(example, base)
            return printed
        own = dataclasses.replace(models, engine=None, load_seconds=dict(models.load_seconds))
        app = create_app(Settings(dtype="float32", **example.settings), models=own)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://docs", timeout=120) as client,
        ):
            printed = await run_shell(example, client)
            return printed

    app = create_app(settings, models=models)
    async with app.router.lifespan_context(app):
        with serve_in_thread(app) as url:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://docs", timeout=120
            ) as client:
                edits: dict[Path, list[tuple[int, int, str]]] = {}
                for example in examples:
                    printed = await printed_by(example, client, url)
                    failure = server_error(printed)
                    if failure:
                        sys.exit(f"{example.name}: the service failed ({failure}); nothing rewritten")
                    for output in example.outputs:
                        if not holds(
                            output, printed
                        ):  # an output that still holds stays as written: a rerun changes nothing
                            edits.setdefault(example.doc, []).append(
                                (output.start, output.end, render(output, printed))
                            )
    for doc, changes in edits.items():
        text = doc.read_text()
        for start, end, fresh in sorted(changes, reverse=True):
            text = text[:start] + fresh + text[end:]
        doc.write_text(text)
        print(f"rewrote {len(changes)} output(s) in {doc.relative_to(ROOT)}")


if __name__ == "__main__":
    chosen = [ROOT / arg for arg in sys.argv[1:]] or DOCS
    asyncio.run(regenerate(chosen))
