"""Loading a causal language model and the cheap, stateless things done with its tokenizer.

The model itself is only ever run by the generation engine's thread (see `engine.py`); this module
owns finding, converting, caching and loading it, and knows nothing of HTTP.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from service.language.bpe_explain import BpeExplainer
from service.language.exceptions import TokenizerNotExplainable

log = logging.getLogger("service.language")


@dataclass
class TokenizedText:
    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]


@dataclass
class LanguageModel:
    """A loaded causal LM with its tokenizer, and what `/info` reports about it."""

    config: Any  # transformers.PretrainedConfig
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
    # Where the packed low-bit weights are kept between starts (beside the converted model); None = not kept.
    lowbit_cache: Path | None = None
    # Where the compiled decoder layer is kept (compiled_layer.py), and the engine's thread count it is
    # compiled for; None = the eager layer.
    compiled_step_dir: Path | None = None
    compiled_step_threads: int = 1
    # Loads the transformers module with its weights again, for `module()` once `model` is shape-only.
    reload_module: Callable[[], Any] | None = field(default=None, repr=False)
    # What holds the weights the serving path multiplies with once `model`'s own are let go (the lean decoder).
    weights_holder: object | None = field(default=None, repr=False)
    # transformers' module, once there is one; `build_module` makes a shape-only one when first asked for.
    built_module: Any = field(default=None, repr=False)
    build_module: Callable[[], Any] | None = field(default=None, repr=False)
    # Parameters the model has (as transformers counts them: tied ones once), where the weights holder knows.
    parameter_count: int | None = field(default=None, repr=False)
    _build_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _module_with_weights: Any = field(default=None, repr=False)
    _module_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _token_texts: dict[int, str] = field(default_factory=dict, repr=False)
    _explainer: BpeExplainer | None = field(default=None, repr=False)
    _explainer_refusal: str | None = field(default=None, repr=False)
    _explainer_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def model(self) -> Any:
        """transformers' module (transformers.PreTrainedModel). Where the weights come from elsewhere (the GGUF's
        low-bit ones in the lean decoder) it is shape-only and built on first use: importing transformers'
        modeling code alone takes over a second, which the serving path never needs."""
        if self.built_module is None:
            with self._build_lock:
                if self.built_module is None:
                    assert self.build_module is not None, "a LanguageModel needs a module or a way to build one"
                    self.built_module = self.build_module()
        return self.built_module

    @model.setter
    def model(self, module: Any) -> None:
        self.built_module = module

    @property
    def vocab_size(self) -> int:
        # The embedding matrix can be larger than the tokenizer's vocabulary (padding rows), and the
        # tokenizer can carry added tokens past `vocab_size`; ids valid for both are below the min.
        rows = (
            int(self.config.vocab_size)  # a module not built yet is built from this config
            if self.built_module is None
            else int(self.built_module.get_input_embeddings().weight.shape[0])
        )
        return min(rows, len(self.tokenizer))

    @property
    def weights_released(self) -> bool:
        """Whether `model` is shape-only (its parameters on the meta device): its config, shapes, buffers and
        module tree are all there, its weights are not; `module()` has them."""
        return self.weights_holder is not None

    def release_module_weights(self, holder: object) -> None:
        """Let go of the transformers module's weights once `holder` (the lean decoder) holds every weight the
        serving path multiplies with, so the process keeps one copy of the model, not two. Nothing happens
        when nothing could load them again."""
        if self.reload_module is None:
            return
        self.weights_holder = holder
        if self.built_module is None:  # shape-only whenever it is built: nothing to let go of
            return
        for module in self.built_module.modules():  # parameters only: buffers (RoPE's frequencies) are small and read
            for name, param in list(module.named_parameters(recurse=False)):
                if param.device.type != "meta":
                    module.register_parameter(name, torch.nn.Parameter(param.to("meta"), requires_grad=False))

    def module(self) -> Any:
        """The transformers module with its weights: `model` itself, or, once its weights were let go, a copy
        loaded again on first use and kept (the generic forward and transformers' references in tests)."""
        if not self.weights_released:
            return self.model
        with self._module_lock:
            if self._module_with_weights is None:
                assert self.reload_module is not None
                log.info(
                    "loading the transformers module's weights of %s again, for a path that runs it", self.model_id
                )
                self._module_with_weights = self.reload_module()
            return self._module_with_weights

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

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        if not self.has_chat_template:
            raise ValueError(f"the model {self.model_id!r} has no chat template; send `prompt` instead of `messages`")
        return str(
            self.tokenizer.apply_chat_template(
                messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        )

    @functools.cached_property
    def renders_tools(self) -> bool:
        """Whether the chat template has a tools section (it writes a tool's definition it is given), as
        Qwen's and Hermes' do; SmolLM2's, like many small models', renders roles and contents only."""
        if not self.has_chat_template:
            return False
        probe = {"type": "function", "function": {"name": "genai_probe_tool", "parameters": {"type": "object"}}}
        try:
            rendered = self.render_chat([{"role": "user", "content": "hi"}], tools=[probe])
        except Exception:  # a template that fails on `tools` does not render them
            return False
        return "genai_probe_tool" in rendered

    def describe(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "source": self.source,
            "revision": self.revision,
            "architecture": (getattr(self.config, "architectures", None) or [type(self.model).__name__])[0],
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "context_length": self.context_length,
            "vocab_size": self.vocab_size,
            "parameters": self.parameter_count or sum(p.numel() for p in self.model.parameters()),
            "chat_template": self.has_chat_template,
            "weights": "gguf" if self.gguf_weights is not None else "dense",
            # the lean decoder's layers run compiled (compiled_layer.py), not eagerly
            "compiled_step": getattr(self.weights_holder, "compiled", None) is not None,
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
