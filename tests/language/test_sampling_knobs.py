"""The sampler's knobs beyond temperature / top-k / top-p: `logit_bias`, `frequency_penalty`,
`presence_penalty` (on the logits, before the temperature) and `min_p` (after it, before top-k and
top-p), in vLLM's order. Each is a stage of `explain`; each row of a batch keeps its own settings.

Over the scripted batch (no model): the expected stages are computed here by hand in float64 from the
scripted logits, independently of the service's functions; then the request-to-engine contract
(`logit_bias_entries`, `SamplingLimits.check`) and the continued final chat message.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from scripted_engine import (
    VOCAB,
    LetterModel,
    MakeEngine,
    ScriptedBatch,
    counting,
    finished,
    greedy_continuation,
    hold_engine,
    scripted_logits,
    tokens,
)

from service.language.chat import ContinuationError, encode_chat
from service.language.exceptions import InvalidRequest
from service.language.sampling import STAGE_ORDER, SamplingParams, TokenChooser, sampler_steps
from service.language.validation import SamplingLimits, logit_bias_entries


def hand_stages(
    logits: torch.Tensor, context: list[int], generated: list[int], params: SamplingParams
) -> list[tuple[str, torch.Tensor]]:
    """The documented steps, one by one in float64: bias, repetition, frequency, presence penalties on
    the logits; then (sampling) temperature, min-p, top-k, top-p on the distribution."""
    scores = logits.double().clone()
    stages = [("model", scores.softmax(-1))]
    if params.logit_bias:
        for token_id, bias in params.logit_bias:
            scores[token_id] += bias
        stages.append(("logit_bias", scores.softmax(-1)))
    if params.repetition_penalty != 1.0:
        for i in set(context):
            s = float(scores[i])
            scores[i] = s * params.repetition_penalty if s < 0 else s / params.repetition_penalty
        stages.append(("repetition_penalty", scores.softmax(-1)))
    if params.frequency_penalty:
        for i in generated:  # once per occurrence
            scores[i] -= params.frequency_penalty
        stages.append(("frequency_penalty", scores.softmax(-1)))
    if params.presence_penalty:
        for i in set(generated):  # once per distinct token
            scores[i] -= params.presence_penalty
        stages.append(("presence_penalty", scores.softmax(-1)))
    if not params.do_sample:
        return stages
    probs = (scores / params.temperature).softmax(-1)
    if params.temperature != 1.0:
        stages.append(("temperature", probs))

    def renormalized(keep: torch.Tensor) -> torch.Tensor:
        kept = torch.where(keep, probs, 0.0)
        return kept / kept.sum()

    if params.min_p:
        probs = renormalized(probs >= params.min_p * probs.max())
        stages.append(("min_p", probs))
    if params.top_k:
        keep = torch.zeros_like(probs, dtype=torch.bool)
        keep[torch.sort(probs, descending=True).indices[: params.top_k]] = True
        probs = renormalized(keep)
        stages.append(("top_k", probs))
    if params.top_p < 1.0:
        running, keep = 0.0, torch.zeros_like(probs, dtype=torch.bool)
        for i in torch.sort(probs, descending=True).indices.tolist():
            keep[i] = True
            running += float(probs[i])
            if running >= params.top_p:
                break
        probs = renormalized(keep)
        stages.append(("top_p", probs))
    return stages


def check_steps(events: list[Any], prompt: list[int], ids: list[int], params: SamplingParams) -> None:
    """Every explained step: the stages named and in order as by hand, each with its distribution's
    kept count, removed mass (total variation) and listed probabilities; the draw re-drawn from the last."""
    for event in events:
        generated = ids[: event.index]
        context = prompt + generated
        expected = hand_stages(scripted_logits(context, counting)[:VOCAB], context, generated, params)
        stages = event.explain.stages
        assert [s.name for s in stages] == [name for name, _ in expected]
        previous = None
        for stage, (_, probs) in zip(stages, expected, strict=True):
            assert stage.kept == int((probs > 0).sum()), stage.name
            removed = 0.0 if previous is None else float((previous - probs).clamp(min=0).sum())
            assert stage.removed_mass == pytest.approx(removed, abs=1e-6), stage.name
            listed = [c.id for c in stage.top]
            assert [c.probability for c in stage.top] == pytest.approx(probs[listed].tolist(), abs=1e-6)
            previous = probs
        last = expected[-1][1]
        if params.do_sample:
            total, drawn = 0.0, None
            for rank, candidate in enumerate(stages[-1].top):
                total += candidate.probability
                if total > event.explain.draw.u:
                    drawn = (candidate.id, rank)
                    break
            assert drawn == (event.id, event.explain.draw.rank)
        else:
            assert event.id == int(torch.argmax(last))


KNOBS = [
    {"logit_bias": ((3, 2.5), (5, -4.0))},
    {"frequency_penalty": 1.2},
    {"presence_penalty": 0.9},
    {"frequency_penalty": -0.5, "presence_penalty": 1.5, "temperature": 1.4},
    {"min_p": 0.2},
    {"min_p": 0.05, "temperature": 1.5, "top_k": 10, "top_p": 0.9},
    {
        "logit_bias": ((7, 1.0),),
        "repetition_penalty": 1.3,
        "frequency_penalty": 0.4,
        "presence_penalty": 0.4,
        "temperature": 0.8,
        "min_p": 0.02,
        "top_k": 12,
        "top_p": 0.95,
    },
]


@pytest.mark.parametrize("knobs", KNOBS, ids=lambda knobs: "+".join(knobs))
async def test_each_knob_is_a_stage_in_the_documented_order(make_engine: MakeEngine, knobs: dict[str, Any]) -> None:
    engine, _ = make_engine()
    params = SamplingParams(
        max_new_tokens=14, do_sample=True, seed=5, ignore_eos=True, top_alternatives=VOCAB, explain=True, **knobs
    )
    prompt = tokens("knobs")
    events, finish = await finished(engine.submit(prompt, params))
    names = [s.name for s in events[-1].explain.stages]
    assert names == sorted(names, key=STAGE_ORDER.index)
    check_steps(events, prompt, finish.ids, params)
    plain, _ = await finished(engine.submit(prompt, dataclasses.replace(params, explain=False)))
    assert [e.id for e in plain] == finish.ids  # explaining draws the same tokens


@pytest.mark.parametrize(
    "knobs",
    [{"logit_bias": ((4, 3.0),)}, {"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"min_p": 0.5}],
    ids=["logit_bias", "frequency_penalty", "presence_penalty", "min_p"],
)
async def test_greedy_steps_see_the_logit_knobs_and_not_min_p(make_engine: MakeEngine, knobs: dict[str, Any]) -> None:
    """Bias and penalties change the logits, so greedy's choice too (and no prompt-lookup draft skips them);
    min-p only cuts what sampling draws from, so greedy leaves it out."""
    prompt = tokens("abcabcab")
    params = SamplingParams(max_new_tokens=10, ignore_eos=True, top_alternatives=VOCAB, explain=True, **knobs)
    for batch, lookup in ((ScriptedBatch(), 0), (ScriptedBatch(supports_drafts=True), 4)):
        engine, _ = make_engine(batch, prompt_lookup_tokens=lookup)
        events, finish = await finished(engine.submit(prompt, params))
        check_steps(events, prompt, finish.ids, params)
        _, quiet_finish = await finished(engine.submit(prompt, dataclasses.replace(params, explain=False)))
        assert quiet_finish.ids == finish.ids
    if "min_p" in knobs:
        assert [s.name for s in events[0].explain.stages] == ["model"]
        assert finish.ids == greedy_continuation(prompt, 10, counting)
    else:
        assert finish.ids != greedy_continuation(prompt, 10, counting)


async def test_a_strong_bias_forces_or_bans_a_token(make_engine: MakeEngine) -> None:
    engine, _ = make_engine()
    prompt = tokens("force")
    forced, _ = await finished(
        engine.submit(prompt, SamplingParams(max_new_tokens=8, ignore_eos=True, logit_bias=((tokens("q")[0], 100.0),)))
    )
    assert [e.id for e in forced] == tokens("q") * 8
    plain = greedy_continuation(prompt, 8, counting)
    banned_ids = tuple(sorted((t, -100.0) for t in set(plain)))
    sampled, _ = await finished(
        engine.submit(
            prompt,
            SamplingParams(max_new_tokens=8, do_sample=True, seed=1, ignore_eos=True, logit_bias=banned_ids),
        )
    )
    assert not {e.id for e in sampled} & set(plain)


async def test_penalties_count_only_generated_tokens(make_engine: MakeEngine) -> None:
    """The prompt's tokens are not penalized: a first token's frequency and presence stages change nothing."""
    engine, _ = make_engine()
    prompt = tokens("aaaaabbbb")
    params = SamplingParams(
        max_new_tokens=3, ignore_eos=True, top_alternatives=VOCAB, explain=True, frequency_penalty=2, presence_penalty=2
    )
    events, finish = await finished(engine.submit(prompt, params))
    first = events[0].explain.stages
    assert [s.name for s in first] == ["model", "frequency_penalty", "presence_penalty"]
    assert first[1].removed_mass == 0.0 and first[2].removed_mass == 0.0
    assert events[1].explain.stages[1].removed_mass > 0  # one token generated: now it counts
    check_steps(events, prompt, finish.ids, params)


def test_frequency_counts_repeats_and_presence_does_not() -> None:
    logits = torch.zeros(6)
    params = SamplingParams(frequency_penalty=0.5)
    scores = sampler_steps(logits, [1, 1, 1], params, sample=False, generated_ids=[2, 2, 2, 4])
    assert scores.tolist() == pytest.approx([0, 0, -1.5, 0, -0.5, 0])
    params = SamplingParams(presence_penalty=0.5)
    scores = sampler_steps(logits, [1, 1, 1], params, sample=False, generated_ids=[2, 2, 2, 4])
    assert scores.tolist() == pytest.approx([0, 0, -0.5, 0, -0.5, 0])
    params = SamplingParams(frequency_penalty=-1.0, presence_penalty=1.0)  # they add: -(-3) - 1 = 2
    scores = sampler_steps(logits, [], params, sample=False, generated_ids=[3, 3, 3])
    assert scores.tolist() == pytest.approx([0, 0, 0, 2, 0, 0])


def test_min_p_keeps_tokens_at_least_min_p_times_the_likeliest() -> None:
    probs = torch.tensor([0.5, 0.25, 0.125, 0.1, 0.025], dtype=torch.float64)
    logits = probs.log().float()
    # ratios to the likeliest: 1, 0.5, 0.25, 0.2, 0.05
    for min_p, kept in ((0.0, 5), (0.04, 5), (0.1, 4), (0.22, 3), (0.3, 2), (0.6, 1), (1.0, 1)):
        scores = sampler_steps(logits, [], SamplingParams(do_sample=True, min_p=min_p), sample=True)
        assert int(torch.isfinite(scores).sum()) == kept, min_p
    # after the temperature: at 2 each ratio is its square root (0.45 for 0.2), so more tokens pass the same min_p
    hot = sampler_steps(logits, [], SamplingParams(do_sample=True, min_p=0.3, temperature=2.0), sample=True)
    assert int(torch.isfinite(hot).sum()) == 4


async def test_rows_with_different_knobs_batched_equal_each_alone(make_engine: MakeEngine) -> None:
    """Several requests in one batch, each with its own knobs, get what each gets alone (seeded)."""
    prompt = tokens("together")
    requests = [
        SamplingParams(max_new_tokens=10, ignore_eos=True),
        SamplingParams(max_new_tokens=10, ignore_eos=True, logit_bias=((2, 3.0),)),
        SamplingParams(max_new_tokens=10, ignore_eos=True, do_sample=True, seed=4, min_p=0.1, temperature=1.3),
        SamplingParams(max_new_tokens=10, ignore_eos=True, do_sample=True, seed=4, frequency_penalty=1.5),
        SamplingParams(max_new_tokens=10, ignore_eos=True, do_sample=True, seed=4, presence_penalty=-1.0, top_k=5),
        SamplingParams(max_new_tokens=10, ignore_eos=True, presence_penalty=2.0, explain=True, top_alternatives=3),
    ]
    engine, batch = make_engine(max_batch_size=8, max_running_requests=8, max_waiting_requests=8)
    alone = [(await finished(engine.submit(prompt, p)))[1].ids for p in requests]
    parked = await hold_engine(engine, batch)
    before = batch.forward_passes
    handles = [engine.submit(prompt, p) for p in requests]
    batch.resume()
    await parked
    together = [(await finished(h))[1].ids for h in handles]
    assert together == alone
    assert batch.forward_passes - before <= 12  # they shared the steps: ten tokens each, alone it took sixty
    assert len({tuple(ids) for ids in alone}) >= 5  # the knobs made a difference
    again = (await finished(engine.submit(prompt, requests[3])))[1].ids
    assert again == alone[3]  # seeded: reproducible


def test_the_chooser_uses_the_generated_part_only() -> None:
    chooser = TokenChooser.create(SamplingParams(presence_penalty=2.0))
    logits = torch.tensor([0.0, 3.0, 2.0])
    assert chooser.choose(logits, [1, 1, 1], []) == 1  # 1 only in the prompt: not penalized
    assert chooser.choose(logits, [1, 1, 1], [1]) == 2  # generated once: 3 - 2 < 2


# ---- the request-to-engine contract -----------------------------------------------------------


def limits(vocab: int = VOCAB) -> SamplingLimits:
    return SamplingLimits(
        max_new_tokens=64,
        default_max_new_tokens=16,
        context_length=128,
        prompt_tokens=3,
        max_top_alternatives=5,
        max_top_k=10,
        max_stop_sequences=4,
        max_text_chars=100,
        request_timeout_s=10.0,
        vocab_size=vocab,
    )


def test_logit_bias_keys_are_token_ids_checked_against_the_vocabulary() -> None:
    assert logit_bias_entries({"7": 1.5, "3": -2}) == ((3, -2.0), (7, 1.5))
    assert logit_bias_entries(None) == () and logit_bias_entries({}) == ()
    for bad in ({"x": 1.0}, {"1.5": 1.0}, {"": 1.0}, {"7": 1.0, "07": 2.0}):
        with pytest.raises(InvalidRequest) as error:
            logit_bias_entries(bad, field="logit_bias")
        assert error.value.field == "logit_bias"
    limits().check(SamplingParams(logit_bias=((0, 1.0), (VOCAB - 1, 1.0))))
    for outside in (VOCAB, -1):
        with pytest.raises(InvalidRequest) as error:
            limits().check(SamplingParams(logit_bias=((outside, 1.0),)))
        assert error.value.field == "logit_bias" and str(VOCAB) in str(error.value)
    many = tuple((i, 1.0) for i in range(301))
    with pytest.raises(InvalidRequest, match="300"):
        limits(1000).check(SamplingParams(logit_bias=many))


class ChatML:
    """A ChatML template as SmolLM2's, over a tokenizer that records what it was asked to encode."""

    special_token_texts = frozenset({"<|im_start|>", "<|im_end|>"})

    def __init__(self) -> None:
        self.encoded: list[tuple[str, bool]] = []

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    def encode(self, text: str, add_special_tokens: bool = False, parse_special: bool = True) -> list[int]:
        self.encoded.append((text, parse_special))
        return [ord(c) for c in text]


def test_a_continued_final_message_is_left_open() -> None:
    messages = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "The colour is"}]
    lm = ChatML()
    answered, _ = encode_chat(lm, messages)
    assert answered.endswith("The colour is<|im_end|>\n<|im_start|>assistant\n")
    lm = ChatML()
    continued, ids = encode_chat(lm, messages, add_generation_prompt=False, continue_final_message=True)
    assert continued == "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\nThe colour is"
    assert ids == [ord(c) for c in continued]
    assert ("The colour is", False) in lm.encoded  # the content still plain text, never control tokens
    closed, _ = encode_chat(ChatML(), messages, add_generation_prompt=False)
    assert closed.endswith("The colour is<|im_end|>\n")
    with pytest.raises(ContinuationError):
        encode_chat(ChatML(), messages, add_generation_prompt=True, continue_final_message=True)


async def test_a_bias_may_leave_one_token(make_engine: MakeEngine) -> None:
    """-100 on every token but one leaves that one, greedy or sampled, and its reported logprob is the model's."""
    engine, _ = make_engine(model=LetterModel())
    banned = tuple((i, -100.0) for i in range(1, VOCAB))
    for params in (
        SamplingParams(max_new_tokens=3, ignore_eos=True, logit_bias=banned),
        SamplingParams(max_new_tokens=3, ignore_eos=True, logit_bias=banned, do_sample=True, seed=2),
    ):
        events, _ = await finished(engine.submit(tokens("ban"), params))
        assert [e.id for e in events] == [0, 0, 0]  # only the end-of-sequence id is left
        model = scripted_logits(tokens("ban"), counting)[:VOCAB].log_softmax(-1)
        assert events[0].logprob == pytest.approx(float(model[0]), abs=1e-5)
