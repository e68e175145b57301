"""The lean Llama decoder computes what transformers' `LlamaForCausalLM` computes, batched or not,
however its cache is rearranged (rows retired and moved, the cache grown), in float32."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import torch
from tiny_models import save_tiny_llama, serve_folder

from service.language import llama_decoder, slot_batch
from service.language.batch import make_running_batch
from service.language.llama_decoder import LlamaDecoder
from service.language.slot_batch import SlotBatch

if TYPE_CHECKING:
    from service.language.model import LanguageModel

PROMPTS = [
    "The capital of France is",
    "Hello",
    "The quick brown fox jumps over the lazy dog because it was tired of",
    "def fibonacci(n):",
]
TOLERANCE = 2e-3  # float32 logits of magnitude ~20, summed in another order


def reference_logits(lm: LanguageModel, ids: list[int]) -> torch.Tensor:
    """transformers' own forward over the whole sequence, alone: the logits for the next token."""
    with torch.inference_mode():
        logits: torch.Tensor = lm.module()(input_ids=torch.tensor([ids])).logits
        return logits[0, -1, : lm.vocab_size].float()


def assert_matches(lm: LanguageModel, logits: torch.Tensor, ids: list[int]) -> None:
    expected = reference_logits(lm, ids)
    assert (logits[: lm.vocab_size] - expected).abs().max().item() < TOLERANCE
    assert int(logits[: lm.vocab_size].argmax()) == int(expected.argmax())


@pytest.fixture(scope="module")
def decoder(language_model: LanguageModel) -> LlamaDecoder:
    assert language_model.dtype == torch.float32
    return LlamaDecoder(language_model)


def test_the_embedded_model_runs_on_the_lean_decoder_with_packed_weights(
    language_model: LanguageModel, decoder: LlamaDecoder
) -> None:
    assert LlamaDecoder.unsupported_reason(language_model) is None
    assert make_running_batch(language_model, 4).kind == "lean-llama"
    assert make_running_batch(language_model, 4, lean=False).kind == "transformers"
    if torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        assert decoder.packed  # every weight passed its check against F.linear
    # Engines over the same loaded model share one decoder (the weights are read-only).
    first, second = make_running_batch(language_model, 4), make_running_batch(language_model, 8)
    assert isinstance(first, SlotBatch) and isinstance(second, SlotBatch)
    assert first.decoder is second.decoder is LlamaDecoder.shared(language_model)


def test_prompts_of_different_lengths_prefilled_together_each_match_transformers(
    language_model: LanguageModel, decoder: LlamaDecoder
) -> None:
    prompts = [language_model.encode(p) for p in PROMPTS]
    logits = SlotBatch(decoder, 8).prefill(prompts)
    for row, ids in enumerate(prompts):
        assert_matches(language_model, logits[row], ids)


def test_decode_steps_match_transformers_over_the_whole_sequence(
    language_model: LanguageModel, decoder: LlamaDecoder
) -> None:
    sequences = [language_model.encode(p) for p in PROMPTS]
    batch = SlotBatch(decoder, 8)
    logits = batch.prefill(sequences)
    for _ in range(6):
        chosen = [int(row[: language_model.vocab_size].argmax()) for row in logits]
        for sequence, token in zip(sequences, chosen, strict=True):
            sequence.append(token)
        logits = batch.decode(chosen)
        for row, sequence in enumerate(sequences):
            assert_matches(language_model, logits[row], sequence)


def test_retired_rows_leave_and_the_survivors_continue_unchanged(
    language_model: LanguageModel, decoder: LlamaDecoder
) -> None:
    sequences = [language_model.encode(p) for p in PROMPTS]
    batch = SlotBatch(decoder, 8)
    batch.prefill(sequences[:3])
    batch.decode([11, 12, 13])
    for sequence, token in zip(sequences[:3], [11, 12, 13], strict=True):
        sequence.append(token)
    batch.keep([1, 2])  # row 0 retires: rows 1 and 2 move down
    logits = batch.prefill([sequences[3]])  # a newcomer takes the third row
    assert_matches(language_model, logits[0], sequences[3])
    survivors = [sequences[1], sequences[2], sequences[3]]
    logits = batch.decode([21, 22, 23])
    for row, (sequence, token) in enumerate(zip(survivors, [21, 22, 23], strict=True)):
        sequence.append(token)
        assert_matches(language_model, logits[row], sequence)
    batch.keep([0, 2])  # rows need not move when only the last retires... but here row 2 moves to 1
    logits = batch.decode([31, 32])
    for row, (sequence, token) in enumerate(zip([survivors[0], survivors[2]], [31, 32], strict=True)):
        sequence.append(token)
        assert_matches(language_model, logits[row], sequence)
    batch.keep([])
    assert batch.prefill([sequences[0]]).shape[0] == 1  # an emptied batch starts afresh


def test_the_cache_grows_past_its_first_allocation_keeping_what_it_holds(
    language_model: LanguageModel, decoder: LlamaDecoder
) -> None:
    short = language_model.encode(PROMPTS[0])
    long = language_model.encode(" ".join([PROMPTS[2]] * 30))
    assert len(long) > slot_batch._INITIAL_CAPACITY
    batch = SlotBatch(decoder, 16)
    batch.prefill([short])
    assert batch.allocated == (1, slot_batch._INITIAL_CAPACITY)  # room for the rows running, not all 16
    logits = batch.prefill([long])
    rows, capacity = batch.allocated
    assert rows == 2 and capacity >= len(long)
    assert_matches(language_model, logits[0], long)
    logits = batch.decode([5, 6])
    assert_matches(language_model, logits[0], [*short, 5])
    assert_matches(language_model, logits[1], [*long, 6])
    batch.keep([0])  # the long one retires: its positions are given back
    assert batch.allocated[1] < capacity
    logits = batch.decode([7])
    assert_matches(language_model, logits[0], [*short, 5, 7])


def test_scoring_prompts_leaves_the_running_rows_alone(language_model: LanguageModel, decoder: LlamaDecoder) -> None:
    running = language_model.encode(PROMPTS[0])
    batch = SlotBatch(decoder, 4)
    batch.prefill([running])
    scored = batch.last_logits([language_model.encode(p) for p in PROMPTS[1:3]])
    for row, prompt in enumerate(PROMPTS[1:3]):
        assert_matches(language_model, scored[row], language_model.encode(prompt))
    logits = batch.decode([7])
    assert_matches(language_model, logits[0], [*running, 7])


# ---- a tiny Llama the test builds: grouped-query attention, an untied output layer ----------


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # tiny_models sits beside the tests, outside the checker's import path: its return type is restated here
    folder: Path = save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    return folder


@pytest.fixture(scope="module")
async def tiny_llama_client(tiny_llama_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_folder(tiny_llama_dir) as client:
        yield client


async def test_a_tiny_llama_served_by_the_lean_decoder_equals_its_generate(
    tiny_llama_client: httpx.AsyncClient, tiny_llama_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = (await tiny_llama_client.get("/info")).json()
    assert info["engine"]["forward"] == "lean-llama"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    prompts = ["The capital", "Once upon a time there", "Hello", "Tokens are pieces of words; models"]
    responses = await asyncio.gather(
        *(
            tiny_llama_client.post("/generate", json={"prompt": p, "max_new_tokens": 20, "ignore_eos": True})
            for p in prompts
        )
    )
    for prompt, response in zip(prompts, responses, strict=True):
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        with torch.inference_mode():
            expected = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=20,
                min_new_tokens=20,
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
            )
        assert response.json()["ids"] == expected[0, ids.shape[1] :].tolist(), prompt


def test_without_onednn_the_plain_products_give_the_same_logits(
    language_model: LanguageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path CUDA (and a torch without oneDNN) takes: F.linear on the fused weights."""
    monkeypatch.setattr(llama_decoder, "_oneDNN_available", lambda: False)
    plain = LlamaDecoder(language_model)
    assert not plain.packed
    prompts = [language_model.encode(p) for p in PROMPTS[:2]]
    batch = SlotBatch(plain, 4)
    logits = batch.prefill(prompts)
    for row, ids in enumerate(prompts):
        assert_matches(language_model, logits[row], ids)
    logits = batch.decode([5, 6])
    assert_matches(language_model, logits[0], [*prompts[0], 5])
    assert_matches(language_model, logits[1], [*prompts[1], 6])


@pytest.mark.parametrize("lean", [True, False])
def test_prompt_logits_give_transformers_logits_at_every_position(language_model: LanguageModel, lean: bool) -> None:
    """What /v1 `echo` scores a prompt with, through either forward pass."""
    ids = language_model.encode(PROMPTS[2])
    batch = make_running_batch(language_model, 4, lean=lean)
    with torch.inference_mode():
        logits = batch.prompt_logits(ids)
        expected = language_model.module()(input_ids=torch.tensor([ids])).logits[0].float()
    assert logits.shape[0] == len(ids)
    assert (
        logits[:, : language_model.vocab_size] - expected[:, : language_model.vocab_size]
    ).abs().max().item() < TOLERANCE
