"""What the two baseline servers share: the embedded model, the service's JSON shapes, and a tiny FastAPI app.

Deliberately plain: sync endpoints (FastAPI runs them on its threadpool, so concurrent requests run
model code side by side on whatever threads are free), no batching, no streaming. `generate_fn` is
the only thing that differs between the baselines.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere: `python bench/baselines/per_request.py`
    sys.path.insert(0, str(ROOT))

import torch
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from service.config import Settings
from service.language.loading import load_language_model
from service.language.model import LanguageModel


class GenerateBody(BaseModel):
    prompt: str = Field(min_length=1)
    max_new_tokens: int = Field(default=64, ge=1, le=4096)
    ignore_eos: bool = False
    stream: bool = False


class NextTokenBody(BaseModel):
    prompt: str = Field(min_length=1)
    top_k: int = Field(default=10, ge=1, le=1000)


class TokenizeBody(BaseModel):
    text: str


# generate_fn(lm, prompt_ids, max_new_tokens, ignore_eos) -> (new_ids, seconds from call to first token)
GenerateFn = Callable[[LanguageModel, list[int], int, bool], tuple[list[int], float | None]]


def load_model() -> LanguageModel:
    """The service's model, in float32 whatever GENAI_DTYPE says: the reference is per-request
    `generate` in float32 (BENCH_BASELINE_DTYPE=bfloat16 measures the other)."""
    settings = Settings()
    dtype = os.environ.get("BENCH_BASELINE_DTYPE", "float32")
    return load_language_model(
        settings.lm_model,
        device=settings.device,
        dtype=dtype,
        cache_dir=settings.cache_dir,
        weights="dense",
        lean=False,
    )


def build_app(lm: LanguageModel, generate_fn: GenerateFn, title: str) -> FastAPI:
    app = FastAPI(title=title)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/tokenize")
    def tokenize(body: TokenizeBody) -> dict[str, Any]:
        tokens = lm.tokenize(body.text)
        return {
            "ids": tokens.ids,
            "tokens": tokens.tokens,
            "offsets": tokens.offsets,
            "count": len(tokens.ids),
            "model": lm.model_id,
        }

    @app.post("/next-token-probs")
    def next_token_probs(body: NextTokenBody) -> dict[str, Any]:
        ids = lm.encode(body.prompt)
        with torch.inference_mode():
            logits = lm.module()(torch.tensor([ids], device=lm.device)).logits[0, -1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        top = torch.topk(logprobs, min(body.top_k, logprobs.shape[0]))
        candidates = [
            {"id": int(i), "token": lm.token_text(int(i)), "probability": float(lp.exp()), "logprob": float(lp)}
            for lp, i in zip(top.values, top.indices, strict=True)
        ]
        return {"candidates": candidates, "prompt_tokens": len(ids), "temperature": 1.0, "model": lm.model_id}

    @app.post("/generate")
    def generate(body: GenerateBody) -> dict[str, Any]:
        if body.stream:
            raise HTTPException(400, "this baseline does not stream")
        started = time.perf_counter()
        ids = lm.encode(body.prompt)
        new_ids, ttft = generate_fn(lm, ids, body.max_new_tokens, body.ignore_eos)
        total = time.perf_counter() - started
        eos = bool(new_ids) and new_ids[-1] in lm.eos_token_ids and not body.ignore_eos
        decode_seconds = total - ttft if ttft is not None else None
        return {
            "text": lm.detokenize(new_ids),
            "ids": new_ids,
            "finish_reason": "eos" if eos else "length",
            "usage": {
                "prompt_tokens": len(ids),
                "completion_tokens": len(new_ids),
                "total_tokens": len(ids) + len(new_ids),
            },
            "timing": {
                "queue_seconds": 0.0,
                "time_to_first_token_seconds": ttft,
                "total_seconds": total,
                "tokens_per_second": (len(new_ids) - 1) / decode_seconds
                if decode_seconds and len(new_ids) > 1
                else None,
            },
            "model": lm.model_id,
        }

    return app


def serve(generate_fn: GenerateFn, title: str, argv: list[str] | None = None) -> None:
    """Parse --host/--port, load the model, serve with uvicorn's defaults (as `python -m service serve` does)."""
    parser = argparse.ArgumentParser(description=title)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    lm = load_model()
    log_level = (
        Settings().log_level
    )  # the service's uvicorn settings: defaults plus its log level (access log on at info)
    uvicorn.run(build_app(lm, generate_fn, title), host=args.host, port=args.port, log_level=log_level)
