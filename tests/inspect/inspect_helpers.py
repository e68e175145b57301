"""References the inspection tests hold the service to: transformers' own forward over the ids the
service reports, float32, eager attention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

SERVED = ["embedded", "generic", "gpt2", "llama"]  # the `served` fixture's clients
FORWARD = {"embedded": "lean-llama", "generic": "transformers", "gpt2": "transformers", "llama": "lean-llama"}
REFERENCE = {
    "embedded": "embedded",
    "generic": "embedded",
    "gpt2": "gpt2",
    "llama": "llama",
}  # `references` key of each


def eager_model(folder: Path) -> Any:
    """transformers' own model from `folder`, float32, with eager attention (which returns its weights)."""
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def run(model: Any, ids: list[int]) -> Any:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids]), output_hidden_states=True, output_attentions=True)


def vocab_of(model: Any, served_vocab: int) -> int:
    return min(served_vocab, int(model.get_input_embeddings().weight.shape[0]))


def final_norm_and_head(model: Any) -> tuple[Any, Any]:
    """The final norm and output layer, by their known names (GPT-2 and Llama)."""
    base = model.base_model
    return (base.ln_f if hasattr(base, "ln_f") else base.norm), model.get_output_embeddings()


def lens_logprobs(model: Any, ids: list[int], position: int) -> torch.Tensor:
    """[layers + 1, vocab]: log-softmax of the output layer over the final-normed hidden state of every
    layer at `position` (the last one is the model's own logits)."""
    out = run(model, ids)
    norm, head = final_norm_and_head(model)
    with torch.inference_mode():
        rows = [head(norm(h[0, position])) for h in out.hidden_states[:-1]] + [out.logits[0, position]]
        return torch.log_softmax(torch.stack(rows).float(), dim=-1)


def path_logprob(model: Any, prompt: list[int], path: list[int]) -> float:
    """The log-probability the model gives `path` after `prompt`, scored in one pass over prompt + path."""
    ids = prompt + path
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    return sum(float(logprobs[len(prompt) - 1 + i, token]) for i, token in enumerate(path))
