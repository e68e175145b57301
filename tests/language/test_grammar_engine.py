"""Structured output in the engine, over a scripted batch and a fake grammar (fake_grammar.py): masks per
row in the batched step, end-of-sequence only where the grammar accepts, a stop when it is complete,
prompt-lookup drafts cut and checked against the grammar, the `grammar` stage of the explain trace,
and rows without a constraint left exactly as they are alone. No model, no grammar library."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from fake_grammar import FakeBackend, WordsMatcher, choice
from scripted_engine import (
    EOS,
    VOCAB,
    MakeEngine,
    ScriptedBatch,
    counting,
    finished,
    greedy_continuation,
    hold_engine,
    text_of,
    tokens,
)

from service.language.exceptions import InvalidRequest
from service.language.grammar import Constraint, Grammars, GrammarState
from service.language.sampling import SamplingParams, ScoredStage, TokenChooser, sampler_steps

WORDS = ("cab", "cabbage", "dog", "zebra")


def ends_now(context: list[int]) -> int:
    """A model that would end every text at once."""
    return int(EOS)


async def test_a_constrained_row_takes_only_what_its_grammar_allows_and_stops_when_whole(
    make_engine: MakeEngine,
) -> None:
    engine, _ = make_engine(grammar_backend=FakeBackend())
    constraint = choice(*WORDS)
    grammar = await engine.grammars.compile(constraint)
    for prompt in ("hello", "abc", "zz", "q"):
        params = SamplingParams(max_new_tokens=12, constraint=constraint)
        events, finish = await finished(engine.submit(tokens(prompt), params, grammar))
        assert finish.text in WORDS, (prompt, finish.text)
        assert finish.text == "".join(text_of(e.id) for e in events if e.id != EOS)
        assert finish.finish_reason in ("stop", "eos")
        if finish.text in ("cabbage", "dog", "zebra"):  # nothing extends these: the grammar ends the row
            assert finish.finish_reason == "stop" and events[-1].id != EOS


async def test_end_of_sequence_only_where_the_grammar_accepts(make_engine: MakeEngine) -> None:
    engine, _ = make_engine(ScriptedBatch(ends_now), grammar_backend=FakeBackend())
    constraint = choice("ab", "abcd")
    grammar = await engine.grammars.compile(constraint)
    events, finish = await finished(
        engine.submit(tokens("x"), SamplingParams(max_new_tokens=8, constraint=constraint), grammar)
    )
    # The model wants to end at once; the grammar holds it until "ab", where ending is allowed (and taken).
    assert [e.id for e in events] == [*tokens("ab"), EOS]
    assert finish.finish_reason == "eos" and finish.text == "ab"
    # Unconstrained, the same model ends at once.
    _, alone = await finished(engine.submit(tokens("x"), SamplingParams(max_new_tokens=8)))
    assert alone.ids == [EOS]


async def test_sampled_rows_stay_within_the_grammar(make_engine: MakeEngine) -> None:
    engine, _ = make_engine(grammar_backend=FakeBackend())
    constraint = choice(*WORDS)
    grammar = await engine.grammars.compile(constraint)
    texts = set()
    for seed in range(20):
        params = SamplingParams(max_new_tokens=12, do_sample=True, temperature=3.0, seed=seed, constraint=constraint)
        _, finish = await finished(engine.submit(tokens("seed"), params, grammar))
        assert finish.text in WORDS
        texts.add(finish.text)
    assert len(texts) >= 2  # sampled, not one fixed path


async def test_rows_without_a_constraint_get_what_they_get_alone(make_engine: MakeEngine) -> None:
    engine, batch = make_engine(grammar_backend=FakeBackend())
    constraint = choice(*WORDS)
    grammar = await engine.grammars.compile(constraint)
    plain = SamplingParams(max_new_tokens=10)
    sampled = SamplingParams(max_new_tokens=10, do_sample=True, temperature=1.5, seed=3, ignore_eos=True)
    _, sampled_alone = await finished(engine.submit(tokens("other"), sampled))
    parked = await hold_engine(engine, batch)  # everything below is admitted together, into one batch
    handles = [
        engine.submit(tokens("hello"), plain),
        engine.submit(tokens("abc"), SamplingParams(max_new_tokens=10, constraint=constraint), grammar),
        engine.submit(tokens("other"), sampled),
        engine.submit(
            tokens("zz"), SamplingParams(max_new_tokens=10, do_sample=True, seed=1, constraint=constraint), grammar
        ),
    ]
    batch.resume()
    await parked
    results = [await finished(h) for h in handles]
    assert batch.prefilled[-4:] == [tokens("hello"), tokens("abc"), tokens("other"), tokens("zz")]
    assert results[0][1].ids == greedy_continuation(tokens("hello"), 10, counting)
    assert results[2][1].ids == sampled_alone.ids
    assert results[1][1].text in WORDS and results[3][1].text in WORDS


async def test_drafts_are_cut_to_what_the_grammar_allows_and_the_output_is_unchanged(
    make_engine: MakeEngine,
) -> None:
    def periodic(context: list[int]) -> int:
        return context[-3]  # repeats the token three back: prompt lookup drafts it right

    # The grammar leaves the period twice (an "x" where the model would repeat the "c"): the drafts past
    # those points are cut, and the row goes on from the token the grammar forced.
    words = ("abcabxabcabcabc", "abcabxabcabcabcd")
    constraint = choice(*words)
    prompt = tokens("abcabc")
    outputs = []
    for lookup in (0, 4):
        engine, batch = make_engine(
            ScriptedBatch(periodic, supports_drafts=True, greedy_feeds=False),
            grammar_backend=FakeBackend(),
            prompt_lookup_tokens=lookup,
        )
        grammar = await engine.grammars.compile(constraint)
        events, finish = await finished(
            engine.submit(prompt, SamplingParams(max_new_tokens=20, constraint=constraint), grammar)
        )
        outputs.append((finish.text, finish.finish_reason, [e.id for e in events]))
        if lookup:
            assert engine.stats.accepted_draft_tokens > 0
            assert batch.forward_passes < 1 + len(events)  # fewer passes than tokens: drafts were kept
    assert outputs[0] == outputs[1]
    assert outputs[0][0] in words


async def test_explain_shows_the_grammar_stage_after_the_model(make_engine: MakeEngine) -> None:
    engine, _ = make_engine(grammar_backend=FakeBackend())
    constraint = choice(*WORDS)
    grammar = await engine.grammars.compile(constraint)
    params = SamplingParams(max_new_tokens=12, explain=True, top_alternatives=3, constraint=constraint)
    events, finish = await finished(engine.submit(tokens("hello"), params, grammar))
    first = events[0].explain
    assert first is not None
    assert [s.name for s in first.stages] == ["model", "grammar"]
    model, masked = first.stages
    assert model.kept == VOCAB and masked.kept == 3  # "c", "d", "z" start a word
    assert 0 < masked.removed_mass < 1
    assert {c.token for c in masked.top} <= {"c", "d", "z"}
    assert finish.text in WORDS


def test_grammar_state_allows_the_end_only_where_the_text_is_whole() -> None:
    state = GrammarState(WordsMatcher(("ab", "abc")), [EOS])
    assert not bool(state.allowed()[EOS]) and bool(state.allowed()[tokens("a")[0]])
    for letter in "ab":
        state.advance(tokens(letter)[0])
    assert bool(state.allowed()[EOS]) and bool(state.allowed()[tokens("c")[0]]) and not state.finished
    state.advance(tokens("c")[0])
    assert state.finished
    assert state.allowed().nonzero().flatten().tolist() == [EOS]  # nothing left: only the end
    ignoring = GrammarState(WordsMatcher(("ab", "abc")), [EOS], ignore_eos=True)
    for letter in "ab":
        ignoring.advance(tokens(letter)[0])
    assert not bool(ignoring.allowed()[EOS])
    assert ignoring.valid_prefix([*tokens("c"), EOS, *tokens("a")]) == tokens("c")


def test_the_grammar_stage_comes_second_and_every_later_stage_keeps_its_mask() -> None:
    logits = torch.randn(VOCAB, generator=torch.Generator().manual_seed(0))
    allowed = torch.zeros(VOCAB, dtype=torch.bool)
    allowed[[3, 5, 8]] = True
    params = SamplingParams(do_sample=True, temperature=0.7, top_k=2, logit_bias=((4, 100.0),), repetition_penalty=1.3)
    record: list[ScoredStage] = []
    sampler_steps(logits, [3, 4], params, sample=True, record=record, allowed=allowed)
    assert [s.name for s in record][:3] == ["model", "grammar", "logit_bias"]
    for stage in record[1:]:
        probs = stage.logits.double().softmax(-1)
        assert float(probs[~allowed].sum()) == 0.0  # a banned token is not brought back by the bias
    chooser = TokenChooser.create(SamplingParams(do_sample=True, seed=5))
    assert all(bool(allowed[chooser.choose(logits, [], None, allowed)]) for _ in range(50))


async def test_compiles_are_cached_refused_naming_the_field_and_bounded_in_time() -> None:
    backend = FakeBackend(slow_s=0.5)
    grammars = Grammars(lambda: backend, timeout_s=0.1)
    try:
        first = await grammars.compile(choice("ab"))
        assert await grammars.compile(choice("ab", field="guided_choice")) is first and backend.compiles == 1
        with pytest.raises(InvalidRequest) as refused:
            await grammars.compile(Constraint("regex", "[a-z]+", "guided_regex"))
        assert refused.value.field == "guided_regex" and "choices only" in refused.value.message
        with pytest.raises(InvalidRequest) as slow:
            await grammars.compile(choice("slow", field="response_format.json_schema.schema"))
        assert slow.value.field == "response_format.json_schema.schema"
        assert "GENAI_GRAMMAR_COMPILE_TIMEOUT_S" in slow.value.message
    finally:
        grammars.close()


async def test_a_compile_past_the_limit_runs_on_once_for_every_waiter_and_is_kept_for_the_retry() -> None:
    backend = FakeBackend(slow_s=0.6)
    grammars = Grammars(lambda: backend, timeout_s=0.1)
    slow = choice("slow", "words")
    try:
        started = time.monotonic()
        refusals = await asyncio.gather(grammars.compile(slow), grammars.compile(slow), return_exceptions=True)
        assert time.monotonic() - started < 0.5  # each refused at its limit, not when the compile ended
        assert all(isinstance(r, InvalidRequest) and "goes on compiling" in r.message for r in refusals)
        assert backend.compiles == 1  # the second request waited on the first one's compile
        # a waiter that goes away (a client disconnecting) does not cancel the compile either
        waiter = asyncio.create_task(grammars.compile(choice("slow", "again")))
        await asyncio.sleep(0.05)
        waiter.cancel()
        await asyncio.sleep(1.4)  # both compiles done (one after the other on the compile thread)
        started = time.monotonic()
        kept = await grammars.compile(slow)
        again = await grammars.compile(choice("slow", "again"))
        assert time.monotonic() - started < 0.05 and backend.compiles == 2  # both retries from the cache
        matchers = (kept.new_matcher(), again.new_matcher())
        assert all(isinstance(m, WordsMatcher) for m in matchers)
        assert [m.words for m in matchers if isinstance(m, WordsMatcher)] == [("slow", "words"), ("slow", "again")]
    finally:
        grammars.close()


async def test_a_constrained_request_needs_its_grammar(make_engine: MakeEngine) -> None:
    engine, _ = make_engine(grammar_backend=FakeBackend())
    grammar = await engine.grammars.compile(choice(*WORDS))
    with pytest.raises(ValueError, match="compiled grammar"):
        engine.submit(tokens("a"), SamplingParams(constraint=choice(*WORDS)))
    with pytest.raises(ValueError, match="compiled grammar"):
        engine.submit(tokens("a"), SamplingParams(), grammar)
    await asyncio.sleep(0)
