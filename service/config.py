"""All settings in one place: environment variables prefixed `GENAI_` (or a `.env` file)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "genai-service"


class Settings(BaseSettings):
    """Every knob of the service. `/info` shows the effective values."""

    model_config = SettingsConfigDict(env_prefix="GENAI_", env_file=".env", extra="ignore")

    # --- language model ---------------------------------------------------------------
    lm_model: str = Field(
        default="",
        description="Empty = the embedded SmolLM2-135M-Instruct; else a Hugging Face id (e.g. `gpt2`), "
        "a local model directory, or a path to a `.gguf` file.",
    )
    lm_revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit) of `lm_model`.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="`auto` = CUDA when available, else CPU."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="`auto` = float32 under the GGUF's own low-bit weights (their products run in bfloat16 anyway); "
        "otherwise bfloat16 on CUDA and on CPUs with native bfloat16 (avx512_bf16 or AMX), else float32. "
        "float32 over dense weights is exact (batched output equals each request alone).",
    )
    weights: Literal["auto", "gguf", "dense"] = Field(
        default="auto",
        description="For a model that came from a GGUF file (the embedded one included), on CPU with the lean "
        "decoder: `gguf` = multiply with the file's own 4-bit weights (int4 kernels and the output head in "
        "bfloat16; norms, residual stream and attention in GENAI_DTYPE); `dense` = with its de-quantized copy "
        "in GENAI_DTYPE. `auto` = gguf on CPUs with native bfloat16 (where it was measured the fastest path that keeps "
        "top-1 agreement with float32 >= 31/32), else dense.",
    )
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Where converted models (GGUF → safetensors) and trained digit models are kept.",
    )
    load_language_model: bool = Field(default=True, description="Set false to serve only the digit classifier.")

    # --- request limits ---------------------------------------------------------------
    max_prompt_tokens: int = Field(
        default=2048, ge=1, description="Longest prompt accepted, in tokens (also capped by the model's context)."
    )
    max_new_tokens: int = Field(default=512, ge=1, description="Largest `max_new_tokens` a request may ask for.")
    default_max_new_tokens: int = Field(
        default=64, ge=1, description="Tokens generated when an OpenAI chat request gives no max_tokens."
    )
    max_top_k: int = Field(default=100, ge=1, description="Largest `top_k` for next-token candidates.")
    max_top_alternatives: int = Field(default=20, ge=0, description="Largest `top_alternatives` per generated step.")
    max_stop_sequences: int = Field(default=8, ge=0, description="Most stop strings one request may give.")
    max_text_chars: int = Field(
        default=100_000, ge=1, description="Longest text accepted by /tokenize and prompts, in characters."
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="Largest request body; larger ones get 413."
    )

    # --- generation engine ------------------------------------------------------------
    max_batch_size: int = Field(default=16, ge=1, description="Sequences decoded together in one step.")
    max_running_requests: int = Field(
        default=16, ge=1, description="Generations running at once (also capped by the batch size)."
    )
    max_waiting_requests: int = Field(
        default=64, ge=0, description="Generations queued behind them; past this a request gets 429 with Retry-After."
    )
    request_timeout_s: float = Field(
        default=120.0, gt=0, description="A generation running longer ends with finish_reason `time_limit`."
    )
    shutdown_grace_s: float = Field(
        default=30.0, ge=0, description="On SIGTERM: stop admitting, then let in-flight work finish for this long."
    )
    torch_threads: int = Field(
        default=0,
        ge=0,
        description="Threads the engine's model work uses; 0 = OMP_NUM_THREADS if set, else one per CPU this process may use (affinity, cgroup quota). No other thread runs torch in parallel.",
    )
    prompt_lookup_tokens: int = Field(
        default=4,
        ge=0,
        description="Greedy requests, while at most GENAI_PROMPT_LOOKUP_MAX_BATCH run: up to this many draft tokens copied from where "
        "the text's last tokens occurred before, checked in one forward pass (prompt lookup); the output is greedy "
        "decoding's (float32: token for token). 0 = off. Lean decoder only.",
    )
    prompt_lookup_max_batch: int = Field(
        default=2,
        ge=1,
        description="Drafting pauses while more sequences than this run: a step's cost grows with the positions it checks.",
    )
    lean_decoder: bool = Field(
        default=True,
        description="Run Llama-family models through the built-in lean forward pass (prepacked weights, preallocated KV cache); "
        "false = transformers' own forward for every model.",
    )
    compiled_step: Literal["off", "on"] = Field(
        default="off",
        description="Under GENAI_WEIGHTS=gguf on CPU: `on` = run each decoder layer as one ahead-of-time compiled "
        "call (AOTInductor: about 1.8x the tokens/s of one stream here; compiled once, 15-40 s on two cores, by "
        "`python -m service provision` or the first start, and kept in cache_dir; needs a C++ compiler, else the "
        "eager layer runs and a log line says why). Off by default: its float rounding differs from the eager "
        "layer's, and on bench/precision.py's 32 prompts its next token was float32's 29 times, under the 31 the "
        "default must keep (docs/models.md).",
    )
    embedding_pooling: Literal["mean", "last"] = Field(
        default="mean",
        description="How /v1/embeddings pools the last layer's states (after the final norm) into one vector: "
        "`mean` = the average over the input's tokens; `last` = the last token's state. Either is L2-normalised.",
    )
    grammar_compile_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Structured output: the longest a request waits for its JSON schema, regex or choice to compile (on "
        "a worker thread of its own, one at a time, queueing included); past it the request is refused naming the field "
        "(422, 400 under /v1) while the compile runs on and is kept for the next request with the same constraint.",
    )
    stream_ping_s: float = Field(default=15.0, gt=0, description="Keep-alive comment interval on silent streams.")

    # --- inspection (/inspect/*: each request is one call on the engine thread, which waits for it) ---
    inspect_max_prompt_tokens: int = Field(
        default=256,
        ge=1,
        description="Longest prompt /inspect/* accepts, in tokens (a pass keeps every layer's states; also capped by GENAI_MAX_PROMPT_TOKENS).",
    )
    inspect_max_lens_entries: int = Field(
        default=20_000,
        ge=1,
        description="Most tokens one /inspect/logit-lens answer lists: positions × layers × top_k.",
    )
    inspect_max_attention_weights: int = Field(
        default=250_000,
        ge=1,
        description="Most weights one /inspect/attention answer holds: layers × heads (1 when averaged) × the keys each query position sees.",
    )
    inspect_max_tree_nodes: int = Field(
        default=256,
        ge=1,
        description="Most nodes one /inspect/tree may expand: branching + branching² + … + branching^depth.",
    )
    inspect_max_tree_depth: int = Field(
        default=16, ge=1, le=64, description="Deepest /inspect/tree (the answer nests one level per step)."
    )

    # --- digit classifier -------------------------------------------------------------
    digits_model_path: Path | None = Field(
        default=None,
        description="Digit model file (.npz arrays, see `make train-digits`). Empty = the packaged default; trained at start-up if missing.",
    )
    digits_max_batch: int = Field(default=64, ge=1, description="Most digits in one /classify-digit batch.")
    digits_max_explain_batch: int = Field(
        default=8,
        ge=1,
        description="Most digits one /classify-digit request may `explain` (each explanation is ~85 KB of JSON).",
    )
    digits_max_image_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1, description="Largest encoded image accepted (bytes)."
    )
    digits_max_image_pixels: int = Field(
        default=16_000_000,
        ge=1,
        description="Largest decoded image accepted (width × height); guards against decompression bombs.",
    )

    # --- HTTP ---------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Interface `serve` binds (`make serve HOST=…`).")
    port: int = Field(default=8000, description="Port `serve` listens on (`make serve PORT=…`).")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS (none by default)."
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="When set, model routes need `Authorization: Bearer <key>`."
    )
    log_json: bool = Field(default=False, description="Write logs as JSON lines.")
    log_prompts: bool = Field(default=False, description="Include prompt text in request logs.")
    log_level: str = Field(default="info", description="debug, info, warning or error.")

    # --- HTTP server (connections, before the app sees a request; see service/http/) -------
    http_max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Largest request head: the request line and header fields together, in bytes. Larger ones get 431 "
        "and the connection is closed.",
    )
    http_header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A request's line and headers must have arrived this many seconds after the connection opened "
        "(or, on a kept-alive connection, after the request's first byte); else 408 and the connection is closed. "
        "A connection that sends nothing in that time is closed without an answer.",
    )
    http_body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="A request's body must have arrived in full this many seconds after its headers; else 408 "
        "(the connection is closed; if a response had already started, it is only closed).",
    )
    http_max_connections: int = Field(
        default=1000,
        ge=1,
        description="Open client connections at once; past this a new connection gets 503 with Retry-After and is closed.",
    )
    http_keep_alive_s: float = Field(
        default=5.0, gt=0, description="An idle kept-alive connection is closed after this many seconds."
    )

    @field_validator("cors_origins", "api_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """Accept `a,b,c` as well as a JSON list, since env vars are easier to write that way."""
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    def public_view(self) -> dict[str, object]:
        """The settings as `/info` shows them: secrets masked."""
        data = self.model_dump(mode="json")
        data["api_keys"] = f"{len(self.api_keys)} configured" if self.api_keys else "none"
        return data
