"""The W4 ceiling: a FastAPI app with one empty POST route, served by uvicorn with the service's settings.

    .venv/bin/python bench/empty_app.py --port 8003

`POST /empty` ignores its body and returns `{}`; `GET /health` answers the runner's readiness check.
uvicorn runs with its defaults as `python -m service serve` does (so uvloop and httptools when
installed) and the service's log level (`GENAI_LOG_LEVEL`, access log included), so the gap between
this and the service's `/tokenize` is what the service itself costs per request.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from service.config import Settings

app = FastAPI(title="empty endpoint")


@app.post("/empty")
async def empty() -> dict[str, str]:
    return {}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8003)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level=Settings().log_level)
