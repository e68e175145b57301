"""Tiny causal LMs the tests build themselves (random weights, a byte-level BPE tokenizer trained on a
few sentences), standing in for hub models such as `gpt2` that this machine cannot download."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import torch

from service.app import create_app, load_models
from service.config import Settings

SENTENCES = [
    "The capital of France is Paris.",
    "Once upon a time there was a tiny model.",
    "Tokens are pieces of words; models predict the next one.",
    "Hello, world! Hello again, world.",
] * 20


def save_tiny_tokenizer(folder: Path) -> Any:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # transformers leaves its __init__ unannotated
        tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def save_tiny_gpt2(folder: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = save_tiny_tokenizer(folder)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def save_tiny_llama(folder: Path, *, chat_template: str | None = None, max_positions: int = 128) -> Path:
    """Grouped-query attention (4 query heads on 2 key/value heads) and an untied output layer, unlike SmolLM2;
    `chat_template` gives its tokenizer one."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = save_tiny_tokenizer(folder)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
        tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # random init is near-uniform; larger weights make greedy choices clear-cut
        for parameter in model.parameters():
            parameter.mul_(8.0)
    model.save_pretrained(folder)
    return folder


@asynccontextmanager
async def serve_folder(folder: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The service with GENAI_LM_MODEL = `folder`, in float32 (the tests compare with the model's own
    `generate`), started in process; an httpx client to it."""
    settings = Settings(lm_model=str(folder), dtype="float32", max_new_tokens=100)
    app = create_app(settings, models=load_models(settings))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tiny") as client,
    ):
        yield client
