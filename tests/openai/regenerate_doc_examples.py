"""Rewrite the JSON outputs of the README's and docs/protocols.md's curl examples from a float32 app on the
embedded models: what `test_docs_examples.py` then holds them to. Run after a change that moves outputs:

    .venv/bin/python tests/openai/regenerate_doc_examples.py

float32, because its results do not depend on the CPU: bfloat16 matrix products round differently on
CPUs with and without AMX, so a bfloat16 output written on one machine fails on another.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
DOCS = [ROOT / "README.md", ROOT / "docs" / "protocols.md"]
KEPT = {"id", "created", "timing"}  # volatile: kept as documented (a quiet machine's timings), not rewritten
BLOCK = re.compile(r"```bash\n(?P<commands>.*?)```\n```json\n(?P<outputs>.*?)```", re.DOTALL)


def _keep_volatile(actual: object, documented: object) -> object:
    if isinstance(actual, dict) and isinstance(documented, dict):
        return {k: documented[k] if k in KEPT and k in documented else _keep_volatile(v, documented.get(k)) for k, v in actual.items()}
    if isinstance(actual, list) and isinstance(documented, list) and len(actual) == len(documented):
        return [_keep_volatile(a, d) for a, d in zip(actual, documented)]
    return actual


async def regenerate() -> None:
    import httpx

    from service.app import create_app, load_models
    from service.config import Settings

    settings = Settings(dtype="float32")
    app = create_app(settings, models=load_models(settings))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://docs", timeout=120) as client:
            for doc in DOCS:
                text = doc.read_text()
                pieces, cursor = [], 0
                for match in BLOCK.finditer(text):
                    commands = [c for c in match["commands"].replace("\\\n", " ").splitlines() if c.strip().startswith("curl ")]
                    outputs = [line for line in match["outputs"].splitlines() if line.strip()]
                    if len(commands) != len(outputs):
                        continue
                    fresh = []
                    for command, documented in zip(commands, outputs):
                        args = shlex.split(command)
                        url = next(a for a in args if a.startswith("localhost:8000")).removeprefix("localhost:8000")
                        body = args[args.index("-d") + 1] if "-d" in args else None
                        if body is not None and body.startswith("@"):
                            break
                        response = await client.request("POST" if body else "GET", url, json=json.loads(body) if body else None)
                        fresh.append(json.dumps(_keep_volatile(response.json(), json.loads(documented)), ensure_ascii=False, separators=(",", ":")))
                    else:
                        start = match.start("outputs")
                        pieces += [text[cursor:start], "\n".join(fresh) + "\n"]
                        cursor = match.end("outputs")
                pieces.append(text[cursor:])
                doc.write_text("".join(pieces))
                print(f"rewrote {doc.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(regenerate())
