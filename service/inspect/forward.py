"""The forward passes inspection needs, by the forward the engine serves the model with, so that what
an inspection shows is what generation computes: the lean decoder (`llama_decoder.py`) for the Llama
family, transformers' own forward for any other causal LM (the rule of `batch.make_running_batch`).

Every method runs on the engine thread (the model's only thread) and returns float32 tensors cut to
the tokenizer's vocabulary. The tree's passes, over the prompt's cache, are in continuations.py.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Iterator, Sequence
from typing import Any, Protocol

import torch

from service.inspect.exceptions import InspectionUnsupported
from service.language.llama_decoder import LlamaDecoder
from service.language.model import LanguageModel

FINAL_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f", "final_norm")


class ModelInspector(Protocol):
    @property
    def kind(self) -> str:
        """The forward used, as `/info` names it (`lean-llama` or `transformers`)."""
        ...

    def lens(self, ids: list[int], positions: Sequence[int], layers: Sequence[int]) -> Iterator[torch.Tensor]:
        """Per position: logits [len(layers), vocab], the final norm and output layer applied to the residual
        stream after each lens layer (0 = the embeddings); the last layer's row is the model's own logits."""
        ...

    def attention(self, ids: list[int], layers: Collection[int]) -> dict[int, torch.Tensor]:
        """Layer -> its attention weights [heads, S query, S key] over the prompt (causal: zero above the diagonal)."""
        ...


def inspector_for(lm: LanguageModel, lean: bool) -> ModelInspector:
    """The inspector over the forward the engine uses for `lm` (`lean` is GENAI_LEAN_DECODER)."""
    if lean and LlamaDecoder.unsupported_reason(lm) is None:
        return LeanInspector(LlamaDecoder.shared(lm))
    return TransformersInspector(lm)


# ---- the lean decoder ----------------------------------------------------------------------------


class LeanInspector:
    kind = "lean-llama"

    def __init__(self, decoder: LlamaDecoder) -> None:
        self.decoder = decoder
        self.vocab = decoder.lm.vocab_size
        self.device = decoder.device

    def ids_tensor(self, ids: Sequence[int]) -> torch.Tensor:
        """[S]: the decoder takes one sequence unbatched for `trace`."""
        return torch.tensor(list(ids), dtype=torch.long, device=self.device)

    def lens(self, ids: list[int], positions: Sequence[int], layers: Sequence[int]) -> Iterator[torch.Tensor]:
        trace = self.decoder.trace(self.ids_tensor(ids))
        for position in positions:
            states = torch.stack([trace.hidden[layer][position] for layer in layers])  # [len(layers), hidden]
            yield self.decoder.lens_logits(states)[:, : self.vocab]

    def attention(self, ids: list[int], layers: Collection[int]) -> dict[int, torch.Tensor]:
        return dict(self.decoder.trace(self.ids_tensor(ids), set(layers)).attentions)


# ---- transformers' forward -----------------------------------------------------------------------


def final_norm(model: Any) -> torch.nn.Module | None:
    """The norm applied before the output layer, found by the names transformers' models give it
    (`model.norm`, `transformer.ln_f`, `model.decoder.final_layer_norm`, ...): the shallowest module so
    named outside the layer lists. None when there is none."""
    found = [
        (name.count("."), name, module)
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in FINAL_NORM_NAMES and not any(part.isdigit() for part in name.split("."))
    ]
    return min(found, key=lambda entry: entry[:2])[2] if found else None


class TransformersInspector:
    """Any causal LM through its own forward: `output_hidden_states`, and `output_attentions` with eager
    attention switched on for that one call (the SDPA and flash kernels return no weights)."""

    kind = "transformers"

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        self.model = lm.module()
        self.vocab = lm.vocab_size
        parameters = inspect.signature(self.model.forward).parameters
        self._logits_to_keep = "logits_to_keep" in parameters
        # transformers renamed `past_key_values` to `cache` (5.2x), as batch.py notes.
        self.cache_kwarg = "cache" if "cache" in parameters else "past_key_values"

    def ids_tensor(self, ids: Sequence[int]) -> torch.Tensor:
        """[1, S]: a batch of one, as transformers' forward takes it."""
        return torch.tensor([list(ids)], dtype=torch.long, device=self.lm.device)

    def lens(self, ids: list[int], positions: Sequence[int], layers: Sequence[int]) -> Iterator[torch.Tensor]:
        norm, head = final_norm(self.model), self.model.get_output_embeddings()
        if norm is None or head is None:
            raise InspectionUnsupported(
                f"the logit lens needs the model's final norm and output layer; {type(self.model).__name__} has no module "
                f"named {' or '.join(FINAL_NORM_NAMES)} outside its layers"
            )
        kwargs: dict[str, Any] = {"output_hidden_states": True, "use_cache": False}
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = torch.tensor(list(positions), dtype=torch.long, device=self.lm.device)
        out = self.model(input_ids=self.ids_tensor(ids), **kwargs)
        hidden = out.hidden_states  # layers + 1 of [1, S, hidden]; the last one already through the final norm
        final = len(hidden) - 1
        for place, position in enumerate(positions):
            model_logits = out.logits[0, place if self._logits_to_keep else position].float()
            rows = [
                model_logits if layer == final else head(norm(hidden[layer][0, position])).float() for layer in layers
            ]
            yield torch.stack(rows)[:, : self.vocab]

    def attention(self, ids: list[int], layers: Collection[int]) -> dict[int, torch.Tensor]:
        config = self.model.config
        previous = config._attn_implementation
        if previous != "eager":
            self.model.set_attn_implementation("eager")
        try:
            if config._attn_implementation != "eager":
                raise InspectionUnsupported(
                    f"{type(self.model).__name__} cannot switch to eager attention, which attention weights need"
                )
            out = self.model(input_ids=self.ids_tensor(ids), output_attentions=True, use_cache=False)
        finally:
            if previous != "eager":
                self.model.set_attn_implementation(previous)
        attentions = out.attentions  # layers of [1, heads, S, S]
        if not attentions or any(weights is None for weights in attentions):
            raise InspectionUnsupported(f"{type(self.model).__name__} returned no attention weights")
        return {layer: attentions[layer][0].float() for layer in layers}
