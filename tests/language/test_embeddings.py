"""Embeddings on the model side (service/language/embeddings.py), in float32: the vectors are the last layer's
states after the final norm, pooled and L2-normalised; the same input gives the same vector alone or padded
into a batch; the lean decoder and transformers' forward agree; the engine batches embedding passes between
decode steps without changing what generations produce."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
import torch.nn.functional as F
from tiny_models import save_tiny_gpt2, save_tiny_llama

from service.config import Settings
from service.language import embeddings
from service.language.embeddings import EmbeddingJob, EmbeddingQueue, Pooling
from service.language.engine import GenerationEngine
from service.language.exceptions import EngineNotReady
from service.language.llama_decoder import LlamaDecoder
from service.language.loading import load_language_model
from service.language.sampling import SamplingParams

if TYPE_CHECKING:
    from service.language.model import LanguageModel

TEXTS = [
    "The capital of France is Paris.",
    "Hello",
    "Tokens are pieces of words; models predict the next one, and the next, and the next.",
    "Once upon a time",
]
SAME = 1e-5  # float32, the same input alone or batched
POOLINGS: list[Pooling] = ["mean", "last"]


def reference(lm: LanguageModel, ids: list[int], pooling: Pooling) -> torch.Tensor:
    """transformers' own forward over the input alone: its last hidden state (after the final norm), pooled."""
    with torch.inference_mode():
        out = lm.module()(input_ids=torch.tensor([ids]), output_hidden_states=True)
    states = out.hidden_states[-1][0].float()  # [S, hidden]
    pooled = states.mean(dim=0) if pooling == "mean" else states[-1]
    return F.normalize(pooled, dim=0)


def embed(model: embeddings.HiddenStates, lm: LanguageModel, inputs: list[list[int]], pooling: Pooling) -> torch.Tensor:
    pad_id = int(lm.tokenizer.pad_token_id or 0)
    with torch.inference_mode():
        return embeddings.embed(model, inputs, pooling, pad_id)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> LanguageModel:
    folder = save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    return load_language_model(str(folder), dtype="float32", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> LanguageModel:
    folder: Path = save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))
    return load_language_model(str(folder), dtype="float32", cache_dir=tmp_path_factory.mktemp("cache"))


# ---- pooling --------------------------------------------------------------------------------------------


def test_pooling_reads_only_real_tokens_and_gives_unit_vectors() -> None:
    torch.manual_seed(0)
    states = torch.randn(2, 4, 8)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    dirty = states.clone()
    dirty[~mask] = float("nan")  # whatever padding computed never reaches a vector
    mean = embeddings.pool(dirty, mask, "mean")
    last = embeddings.pool(dirty, mask, "last")
    assert torch.allclose(mean[0], F.normalize(states[0, :3].mean(0), dim=0))
    assert torch.allclose(mean[1], F.normalize(states[1, :2].mean(0), dim=0))
    assert torch.allclose(last[0], F.normalize(states[0, 2], dim=0))
    assert torch.allclose(last[1], F.normalize(states[1, 1], dim=0))
    assert torch.allclose(mean.norm(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match="pooling"):
        embeddings.pool(states, mask, "max")  # type: ignore[arg-type]  # what a typo in code would pass


# ---- the vectors: after the final norm, either forward, alone = batched -------------------------------------


@pytest.mark.parametrize("pooling", POOLINGS)
def test_the_embedded_model_gives_the_final_norms_output_pooled(
    language_model: LanguageModel, pooling: Pooling
) -> None:
    assert language_model.dtype == torch.float32
    lean = embeddings.hidden_states_for(language_model)
    assert lean.kind == "lean-llama"
    assert lean.hidden_size == language_model.model.config.hidden_size == 576
    inputs = [language_model.encode(t) for t in TEXTS]
    got = embed(lean, language_model, inputs, pooling)
    assert got.shape == (len(TEXTS), 576) and got.dtype == torch.float32
    for row, ids in enumerate(inputs):
        assert (got[row] - reference(language_model, ids, pooling)).abs().max().item() < SAME
    # ... and not the states before that norm (its weights are not uniform, so the two point elsewhere)
    trace = LlamaDecoder.shared(language_model).trace(torch.tensor(inputs[0]))
    before = trace.hidden[-1].float()
    before_pooled = F.normalize(before.mean(0) if pooling == "mean" else before[-1], dim=0)
    assert (got[0] - before_pooled).abs().max().item() > 1e-2


@pytest.mark.parametrize("pooling", POOLINGS)
def test_an_input_gives_the_same_vector_alone_or_batched(language_model: LanguageModel, pooling: Pooling) -> None:
    lean = embeddings.hidden_states_for(language_model)
    inputs = [language_model.encode(t) for t in TEXTS]
    assert len({len(ids) for ids in inputs}) == len(inputs)  # every row padded differently
    batched = embed(lean, language_model, inputs, pooling)
    reordered = embed(lean, language_model, inputs[::-1], pooling).flip(0)
    for row, ids in enumerate(inputs):
        alone = embed(lean, language_model, [ids], pooling)[0]
        assert (batched[row] - alone).abs().max().item() < SAME
        assert (reordered[row] - alone).abs().max().item() < SAME


def test_lean_and_transformers_forwards_agree(language_model: LanguageModel, tiny_llama: LanguageModel) -> None:
    for lm in (language_model, tiny_llama):
        lean = embeddings.hidden_states_for(lm, lean=True)
        general = embeddings.hidden_states_for(lm, lean=False)
        assert (lean.kind, general.kind) == ("lean-llama", "transformers")
        inputs = [lm.encode(t) for t in TEXTS]
        for pooling in POOLINGS:
            a, b = embed(lean, lm, inputs, pooling), embed(general, lm, inputs, pooling)
            assert (a - b).abs().max().item() < SAME


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_tiny_models_batched_equal_their_own_forward_alone(
    model: str, pooling: Pooling, request: pytest.FixtureRequest
) -> None:
    lm: LanguageModel = request.getfixturevalue(model)
    forward = embeddings.hidden_states_for(lm)
    assert forward.kind == ("lean-llama" if model == "tiny_llama" else "transformers")
    inputs = [lm.encode(t) for t in TEXTS]
    got = embed(forward, lm, inputs, pooling)
    assert got.shape == (len(TEXTS), lm.model.config.hidden_size)
    for row, ids in enumerate(inputs):
        assert (got[row] - reference(lm, ids, pooling)).abs().max().item() < SAME
    assert not torch.allclose(got[0], got[1])  # different inputs, different vectors


# ---- the queue: bounded passes, oldest first ----------------------------------------------------------


def test_the_queue_takes_bounded_passes_oldest_first_and_drops_cancelled_jobs() -> None:
    queue = EmbeddingQueue()
    first = EmbeddingJob([[1] * 5, [2] * 3, [3] * 9])
    cancelled = EmbeddingJob([[4] * 2])
    last = EmbeddingJob([[5] * 4, [6] * 40])
    for job in (first, cancelled, last):
        queue.add(job)
    assert cancelled.future.cancel()

    passes = []
    while queue:
        passes.append([(job, index) for job, index in queue.take(max_tokens=20, max_rows=3)])
    # each pass: rows × longest <= 20, except an input longer than that, which runs alone
    assert passes == [
        [(first, 1), (first, 0)],  # shortest first within a job; (first, 2) of 9 tokens would make 3 × 9
        [(first, 2), (last, 0)],
        [(last, 1)],
    ]


def test_a_job_is_answered_once_all_its_inputs_are_served(language_model: LanguageModel) -> None:
    embedder = embeddings.Embedder(language_model, "mean")
    inputs = [language_model.encode(t) for t in TEXTS]
    job = EmbeddingJob(inputs)
    queue = EmbeddingQueue()
    queue.add(job)
    with torch.inference_mode():
        while queue:
            assert not job.future.done()
            embedder.serve(queue.take(max_tokens=1, max_rows=1))  # one input a pass
    expected = embed(embedder.model, language_model, inputs, "mean")
    assert (job.future.result(timeout=0) - expected).abs().max().item() < SAME


def test_failing_jobs_get_their_own_exception() -> None:
    jobs = [EmbeddingJob([[1]]), EmbeddingJob([[2]])]
    jobs[0].future.set_result(torch.zeros(1, 2))
    embeddings.fail_embeddings(jobs, lambda: RuntimeError("boom"))
    assert jobs[0].future.exception() is None
    with pytest.raises(RuntimeError, match="boom"):
        jobs[1].future.result(timeout=0)


# ---- on the engine ------------------------------------------------------------------------------------


async def test_the_engine_embeds_between_decode_steps_without_changing_generations(tiny_llama: LanguageModel) -> None:
    settings = Settings(dtype="float32", prompt_lookup_tokens=0)
    engine = GenerationEngine(tiny_llama, settings)
    engine.start()
    try:
        prompt = tiny_llama.encode("The capital of France is")
        params = SamplingParams(max_new_tokens=30, ignore_eos=True)
        alone_tokens, _ = await engine.submit(prompt, params).result()

        inputs = [tiny_llama.encode(t) for t in TEXTS]
        handle = engine.submit(prompt, params)
        vectors = await asyncio.gather(*(engine.embed([ids]) for ids in inputs), engine.embed(inputs))
        tokens, finish = await handle.result()
        assert [t.id for t in tokens] == [t.id for t in alone_tokens]
        assert finish.finish_reason == "length"
        together = vectors[-1]
        for row, ids in enumerate(inputs):
            assert (vectors[row][0] - together[row]).abs().max().item() < SAME
            assert (together[row] - reference(tiny_llama, ids, "mean")).abs().max().item() < SAME
        assert engine.held_count == 0  # every request gave its place back
    finally:
        engine.shutdown()


async def test_the_engine_pools_by_the_setting(tiny_llama: LanguageModel) -> None:
    engine = GenerationEngine(tiny_llama, Settings(dtype="float32", embedding_pooling="last", lean_decoder=False))
    engine.start()
    try:
        ids = tiny_llama.encode(TEXTS[0])
        got = (await engine.embed([ids]))[0]
        assert (got - reference(tiny_llama, ids, "last")).abs().max().item() < SAME
        assert (got - reference(tiny_llama, ids, "mean")).abs().max().item() > 1e-2
    finally:
        engine.shutdown()


async def test_a_failing_pass_fails_its_request_not_the_engine(
    tiny_llama: LanguageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = GenerationEngine(tiny_llama, Settings(dtype="float32"))
    engine.start()
    try:
        ids = tiny_llama.encode(TEXTS[1])
        good = await engine.embed([ids])

        def broken(*args: object) -> torch.Tensor:
            raise RuntimeError("the forward broke")

        with monkeypatch.context() as patch:
            patch.setattr(embeddings, "embed", broken)
            with pytest.raises(Exception, match="the forward broke"):
                await engine.embed([ids])
        again = await engine.embed([ids])
        assert torch.equal(good, again)
        assert engine.held_count == 0
    finally:
        engine.shutdown()


async def test_after_shutdown_an_embedding_is_refused(tiny_llama: LanguageModel) -> None:
    engine = GenerationEngine(tiny_llama, Settings(dtype="float32"))
    engine.start()
    engine.shutdown()
    with pytest.raises(EngineNotReady):
        await engine.embed([tiny_llama.encode(TEXTS[0])])
