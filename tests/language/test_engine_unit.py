"""The generation engine over a scripted `RunningBatch` (scripted_engine.py): admission, retirement,
cancellation, stop criteria and token choice, with no real model (fast, deterministic)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch
from scripted_engine import (
    EOS,
    VOCAB,
    LetterModel,
    MakeEngine,
    ScriptedBatch,
    counting,
    finished,
    greedy_continuation,
    hold_engine,
    next_events,
    scripted_logits,
    text_of,
    tokens,
    until_true,
)

from service.language.events import ErrorEvent, FinishEvent, TokenEvent
from service.language.exceptions import EngineOverloaded
from service.language.sampling import SamplingParams, TokenChooser, temperature_scaled
from service.language.sequence import interruption, stop_reason

# ---- token choice ------------------------------------------------------------------------


async def test_greedy_takes_the_argmax_within_the_vocabulary(
    make_engine: MakeEngine,
) -> None:
    engine, _ = make_engine()
    prompts = [tokens("hello"), tokens("abc"), tokens("zz")]
    handles = [engine.submit(p, SamplingParams(max_new_tokens=8)) for p in prompts]
    for prompt, handle in zip(prompts, handles, strict=True):
        events, finish = await finished(handle)
        expected = greedy_continuation(prompt, 8, counting)
        assert [e.id for e in events] == expected == finish.ids
        assert finish.finish_reason == "length" and finish.text == "".join(text_of(t) for t in expected)
        for event, context_end in zip(events, range(len(prompt), len(prompt) + 8), strict=True):
            context = (prompt + expected)[:context_end]
            logprobs = torch.log_softmax(scripted_logits(context, counting)[:VOCAB], dim=-1)
            assert event.logprob == pytest.approx(float(logprobs.max()), abs=1e-6)  # the model's own, temperature 1


async def test_a_sampled_request_draws_with_its_own_seeded_chooser(
    make_engine: MakeEngine,
) -> None:
    engine, _ = make_engine()
    params = SamplingParams(max_new_tokens=12, do_sample=True, temperature=1.5, top_k=10, seed=1234, ignore_eos=True)
    prompt = tokens("seed")
    # what its chooser draws alone, from the same logits (cut to the vocabulary)
    chooser, context, expected = TokenChooser.create(params), list(prompt), []
    for _ in range(12):
        expected.append(chooser.choose(scripted_logits(context, counting)[:VOCAB], context))
        context.append(expected[-1])
    greedy = engine.submit(tokens("other"), SamplingParams(max_new_tokens=12))  # shares the batch
    _, finish = await finished(engine.submit(prompt, params))
    await finished(greedy)
    assert finish.ids == expected
    assert expected != greedy_continuation(prompt, 12, counting)  # sampling, not the argmax


async def test_next_token_distribution_is_at_the_requested_temperature(
    make_engine: MakeEngine,
) -> None:
    engine, _ = make_engine()
    prompt = tokens("dist")
    logits = scripted_logits(prompt, counting)[:VOCAB]
    for temperature in (1.0, 0.5, 3.0):
        answer = await asyncio.wait_for(engine.next_token_distribution(prompt, top_k=4, temperature=temperature), 10)
        expected = torch.topk(torch.log_softmax(logits / temperature, dim=-1), 4)
        assert [c.id for c in answer.candidates] == expected.indices.tolist()
        assert [c.logprob for c in answer.candidates] == pytest.approx(expected.values.tolist(), abs=1e-5)
        assert answer.prompt_tokens == len(prompt)
    coldest = await asyncio.wait_for(engine.next_token_distribution(prompt, top_k=2, temperature=0.0), 10)
    assert coldest.candidates[0].id == counting(prompt) and coldest.candidates[0].probability == 1.0
    assert coldest.candidates[1].probability == 0.0


def test_one_temperature_routine_is_finite_and_tends_to_greedy() -> None:
    row = torch.tensor([[1.0, 3.0, -2.0], [0.0, 0.0, 5.0]])
    scaled = temperature_scaled(row, 0.5)  # [2, 3]
    assert torch.allclose(scaled, (row - row.max(dim=-1, keepdim=True).values) / 0.5)
    for temperature in (0.0, 5e-324, 1e-40):
        cold = temperature_scaled(row, temperature)
        assert bool(torch.isfinite(cold).all())
        assert torch.equal(cold.softmax(-1), torch.nn.functional.one_hot(row.argmax(-1), 3).float())


async def test_prompt_logprobs_score_each_token_after_the_first(
    make_engine: MakeEngine,
) -> None:
    engine, _ = make_engine()
    ids = tokens("abcd")
    scored = await asyncio.wait_for(engine.prompt_logprobs(ids, top_n=2), 10)
    assert len(scored) == len(ids) - 1
    for position, (logprob, top) in enumerate(scored):
        logprobs = torch.log_softmax(scripted_logits(ids[: position + 1], counting)[:VOCAB], dim=-1)
        assert logprob == pytest.approx(float(logprobs[ids[position + 1]]), abs=1e-6)
        assert [c.id for c in top] == torch.topk(logprobs, 2).indices.tolist()


# ---- stop criteria -----------------------------------------------------------------------


class Spelling:
    """A script: after a prompt of `prompt_length` tokens, the letters of `word`, then `then` forever."""

    def __init__(self, prompt_length: int, word: str, then: int = EOS) -> None:
        self.prompt_length, self.ids, self.then = prompt_length, tokens(word), then

    def __call__(self, context: list[int]) -> int:
        done = len(context) - self.prompt_length
        return self.ids[done] if done < len(self.ids) else self.then


async def test_eos_ends_with_its_text_and_ignore_eos_runs_on(
    make_engine: MakeEngine,
) -> None:
    prompt = tokens("q")
    engine, _ = make_engine(ScriptedBatch(Spelling(len(prompt), "ab")))
    events, finish = await finished(engine.submit(prompt, SamplingParams(max_new_tokens=10)))
    assert finish.finish_reason == "eos" and finish.ids == [*tokens("ab"), EOS] and finish.text == "ab"
    assert [e.special for e in events] == [False, False, True] and "".join(e.text for e in events) == "ab"

    events, finish = await finished(engine.submit(prompt, SamplingParams(max_new_tokens=5, ignore_eos=True)))
    assert finish.finish_reason == "length" and finish.ids == [*tokens("ab"), EOS, EOS, EOS] and finish.text == "ab"


async def test_a_stop_string_ends_the_text_before_it(
    make_engine: MakeEngine,
) -> None:
    prompt = tokens("q")
    engine, _ = make_engine(ScriptedBatch(Spelling(len(prompt), "abcdefgh")))
    events, finish = await finished(engine.submit(prompt, SamplingParams(max_new_tokens=20, stop=("xyz", "de"))))
    assert finish.finish_reason == "stop" and finish.text == "abc"
    assert finish.ids == tokens("abcde")  # the stop string's tokens were generated, its text is not sent
    assert "".join(e.text for e in events) == "abc"


async def test_length_is_max_new_tokens_or_the_context(
    make_engine: MakeEngine,
) -> None:
    engine, _ = make_engine(model=LetterModel(context_length=10))
    _, finish = await finished(engine.submit(tokens("ab"), SamplingParams(max_new_tokens=4)))
    assert finish.finish_reason == "length" and finish.completion_tokens == 4
    _, finish = await finished(engine.submit(tokens("abcdefg"), SamplingParams(max_new_tokens=50)))
    assert finish.finish_reason == "length" and finish.completion_tokens == 3  # 7 + 3 fill the context of 10


async def test_a_deadline_mid_generation_ends_it_time_limit(
    make_engine: MakeEngine,
) -> None:
    engine, batch = make_engine()
    batch.pause()
    handle = engine.submit(tokens("slow"), SamplingParams(max_new_tokens=50, timeout_s=0.05))
    stream = handle.events()
    batch.allow(1)  # the prefill: the first token
    [first] = await next_events(stream, 1)
    assert isinstance(first, TokenEvent)
    await asyncio.sleep(0.1)  # past the deadline
    batch.resume()
    _, finish = await finished(handle)
    assert finish.finish_reason == "time_limit" and 1 <= finish.completion_tokens <= 2  # at most the step under way


async def test_a_deadline_before_the_first_token_ends_it_with_no_text(
    make_engine: MakeEngine,
) -> None:
    engine, batch = make_engine(max_batch_size=1, max_running_requests=1)
    batch.pause()
    ahead = engine.submit(tokens("first"), SamplingParams(max_new_tokens=3))
    await until_true(lambda: batch.waiting_for_turn == 1)  # its prefill is under way
    late = engine.submit(tokens("late"), SamplingParams(max_new_tokens=3, timeout_s=0.02))  # queued behind it
    await asyncio.sleep(0.05)
    batch.resume()
    events, finish = await finished(late)
    assert events == [] and finish.finish_reason == "time_limit"
    assert finish.text == "" and finish.completion_tokens == 0 and finish.time_to_first_token_seconds is None
    assert tokens("late") not in batch.prefilled  # never cost a forward pass
    assert (await finished(ahead))[1].finish_reason == "length"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ({"token_is_eos": True}, "eos"),
        ({"token_is_eos": True, "params": SamplingParams(ignore_eos=True)}, None),
        ({"token_is_eos": True, "stop_string_seen": True}, "eos"),
        ({"stop_string_seen": True, "generated_tokens": 64}, "stop"),
        ({"generated_tokens": 64}, "length"),
        ({"prompt_tokens": 90, "generated_tokens": 10}, "length"),
        ({"deadline": 5.0, "now": 5.0}, "time_limit"),
        ({"deadline": 5.0, "now": 4.9}, None),
        ({"generated_tokens": 64, "deadline": 1.0, "now": 2.0}, "length"),
        ({}, None),
    ],
)
def test_stop_reason_rules_in_order(case: dict[str, Any], expected: str | None) -> None:
    arguments: dict[str, Any] = {
        "params": SamplingParams(max_new_tokens=64),
        "token_is_eos": False,
        "stop_string_seen": False,
        "generated_tokens": 3,
        "prompt_tokens": 5,
        "context_length": 100,
        "deadline": None,
        "now": 0.0,
    }
    arguments.update(case)
    params = arguments.pop("params")
    assert stop_reason(params, **arguments) == expected


def test_interruption_prefers_cancelled_to_time_limit() -> None:
    assert interruption(True, 1.0, 2.0) == "cancelled"
    assert interruption(False, 1.0, 2.0) == "time_limit"
    assert interruption(False, 3.0, 2.0) is None and interruption(False, None, 2.0) is None


# ---- admission ---------------------------------------------------------------------------


async def test_the_admission_bound_refuses_past_max_held_and_gives_places_back(
    make_engine: MakeEngine,
) -> None:
    engine, batch = make_engine(max_batch_size=2, max_running_requests=2, max_waiting_requests=2)
    assert engine.max_held == 4
    batch.pause()
    handles = [engine.submit(tokens("abc"), SamplingParams(max_new_tokens=3)) for _ in range(4)]
    assert engine.held_count == 4
    with pytest.raises(EngineOverloaded) as refused:
        engine.submit(tokens("abc"), SamplingParams(max_new_tokens=3))
    assert 1 <= refused.value.retry_after_seconds <= 60
    with pytest.raises(EngineOverloaded):
        await engine.next_token_distribution(tokens("abc"), top_k=3)
    assert engine.stats.refused == 2 and engine.held_count == 4
    batch.resume()
    for handle in handles:
        assert (await finished(handle))[1].finish_reason == "length"
    assert engine.held_count == 0 and engine.stats.peak_held == 4
    await finished(engine.submit(tokens("abc"), SamplingParams(max_new_tokens=2)))  # room again
    assert engine.held_count == 0


async def test_a_burst_never_holds_more_than_the_bound(
    make_engine: MakeEngine,
) -> None:
    engine, batch = make_engine(max_batch_size=2, max_running_requests=2, max_waiting_requests=3)
    held_at_steps: list[int] = []
    engine.step_listeners.append(lambda rows, seconds: held_at_steps.append(engine.held_count))
    batch.pause()
    accepted, refusals = [], 0
    for i in range(30):
        try:
            accepted.append(engine.submit(tokens("burst")[: 1 + i % 5], SamplingParams(max_new_tokens=6)))
        except EngineOverloaded as exc:
            refusals += 1
            assert 1 <= exc.retry_after_seconds <= 60
        assert engine.held_count <= engine.max_held
    assert len(accepted) == engine.max_held == 5 and refusals == 25 == engine.stats.refused
    batch.resume()
    for handle in accepted:
        assert (await finished(handle))[1].completion_tokens == 6
    assert held_at_steps and max(held_at_steps) <= engine.max_held
    assert engine.stats.peak_held == engine.max_held and engine.held_count == 0


async def test_places_of_cancelled_and_timed_out_requests_are_given_back(
    make_engine: MakeEngine,
) -> None:
    engine, batch = make_engine(max_batch_size=1, max_running_requests=1, max_waiting_requests=2)
    batch.pause()
    running = engine.submit(tokens("a"), SamplingParams(max_new_tokens=100))
    queued = engine.submit(tokens("b"), SamplingParams(max_new_tokens=100))
    expiring = engine.submit(tokens("c"), SamplingParams(max_new_tokens=100, timeout_s=0.05))
    assert engine.held_count == 3
    queued.cancel()
    running.cancel()
    await asyncio.sleep(0.1)
    batch.resume()
    reasons = [(await finished(h))[1].finish_reason for h in (running, queued, expiring)]
    assert reasons == ["cancelled", "cancelled", "time_limit"]
    assert engine.held_count == 0


# ---- retirement and cancellation ---------------------------------------------------------


async def test_finished_rows_leave_the_batch_through_keep(
    make_engine: MakeEngine,
) -> None:
    engine, batch = make_engine()
    parked = await hold_engine(engine, batch)
    prompts = [tokens("one"), tokens("two"), tokens("three")]
    lengths = [5, 2, 4]
    handles = [engine.submit(p, SamplingParams(max_new_tokens=n)) for p, n in zip(prompts, lengths, strict=True)]
    batch.resume()
    await parked
    for prompt, n, handle in zip(prompts, lengths, handles, strict=True):
        assert (await finished(handle))[1].ids == greedy_continuation(prompt, n, counting)  # rows never mixed up
    # the last row's client hears of its finish just before the engine drops it from the batch
    await until_true(lambda: len(batch.keep_calls) == 3)
    # row 1 ends after 2 tokens (rows 0 and 2 stay), then the old row 2, now row 1, after 4, then row 0
    assert batch.keep_calls == [[0, 2], [0], []]
    assert batch.rows == [] and engine.running_count == 0


async def test_a_cancelled_generation_finishes_within_a_step_with_what_it_made(
    make_engine: MakeEngine,
) -> None:
    engine, batch = make_engine(model=LetterModel(context_length=10_000))
    parked = await hold_engine(engine, batch)
    prompt = tokens("cancel")
    other = engine.submit(tokens("stay"), SamplingParams(max_new_tokens=30))
    handle = engine.submit(prompt, SamplingParams(max_new_tokens=1000))
    stream = handle.events()
    batch.allow(1 + 3)  # the parked pass, then one prefill for both and two decode steps
    await parked
    received = await next_events(stream, 3)
    handle.cancel()
    batch.allow(1)  # only one more pass: the step under way may still add a token, then it must finish
    rest = await next_events(stream, 1)
    if isinstance(rest[0], TokenEvent):
        received += rest
        rest = await next_events(stream, 1)
    [finish] = rest
    assert isinstance(finish, FinishEvent) and finish.finish_reason == "cancelled"
    assert finish.ids == [e.id for e in received] == greedy_continuation(prompt, len(received), counting)
    assert 3 <= len(received) <= 4
    assert engine.held_count == 1  # the other one still runs ...
    batch.resume()
    assert (await finished(other))[1].finish_reason == "length"  # ... unharmed
    assert engine.held_count == 0


async def test_cancel_all_ends_everything_held(
    make_engine: MakeEngine,
) -> None:
    engine, batch = make_engine(max_batch_size=1, max_running_requests=1)
    batch.pause()
    handles = [engine.submit(tokens("x"), SamplingParams(max_new_tokens=500)) for _ in range(3)]
    engine.cancel_all()
    batch.resume()
    assert [(await finished(h))[1].finish_reason for h in handles] == ["cancelled"] * 3
    assert engine.held_count == 0


async def test_a_failing_forward_pass_fails_its_requests_not_the_engine(
    make_engine: MakeEngine,
) -> None:
    def broken(context: list[int]) -> int:
        if len(context) > 6:
            raise RuntimeError("scripted failure")
        return int(counting(context))  # (helpers imported by their pytest name are Any to mypy)

    engine, _ = make_engine(ScriptedBatch(broken))
    handle = engine.submit(tokens("abcde"), SamplingParams(max_new_tokens=10))
    events = [event async for event in handle.events()]
    assert isinstance(events[-1], ErrorEvent) and "scripted failure" in events[-1].message
    assert engine.held_count == 0 and engine.running_count == 0 and engine.is_running
    _, finish = await finished(engine.submit(tokens("ab"), SamplingParams(max_new_tokens=3)))  # still serving
    assert finish.finish_reason == "length"


async def test_shutdown_ends_what_is_left_with_an_error(
    make_engine: MakeEngine,
) -> None:
    engine, batch = make_engine(model=LetterModel(context_length=1_000_000), max_batch_size=1, max_running_requests=1)
    batch.pause()
    running = engine.submit(tokens("a"), SamplingParams(max_new_tokens=1_000_000))
    queued = engine.submit(tokens("b"), SamplingParams(max_new_tokens=1_000_000))
    batch.allow(1)
    await next_events(running.events(), 1)
    shutting = asyncio.get_running_loop().run_in_executor(None, engine.shutdown)
    batch.resume()  # the engine sees the stop between two steps
    await asyncio.wait_for(shutting, 10)
    for handle in (running, queued):
        events = [event async for event in handle.events()]
        assert isinstance(events[-1], ErrorEvent) and "shut down" in events[-1].message
    assert engine.held_count == 0


# ---- prompt-lookup drafts ----------------------------------------------------------------


def mostly_periodic(context: list[int]) -> int:
    """Repeats the token three back (prompt lookup's drafts are right), except every seventh place."""
    return counting(context) if len(context) % 7 == 0 else context[-3]


async def test_checked_drafts_give_greedy_output_in_fewer_passes(
    make_engine: MakeEngine,
) -> None:
    prompt = tokens("abcabcab")
    plain, plain_batch = make_engine(ScriptedBatch(mostly_periodic))
    drafting, drafting_batch = make_engine(ScriptedBatch(mostly_periodic, supports_drafts=True), prompt_lookup_tokens=4)
    expected = greedy_continuation(prompt, 30, mostly_periodic)
    for engine in (plain, drafting):
        events, finish = await finished(engine.submit(prompt, SamplingParams(max_new_tokens=30)))
        assert finish.ids == [e.id for e in events] == expected
        assert [e.index for e in events] == list(range(30))
    assert plain.stats.draft_tokens == 0 and plain_batch.forward_passes == 30
    assert 0 < drafting.stats.accepted_draft_tokens < drafting.stats.draft_tokens  # some drafts were wrong
    assert drafting_batch.forward_passes == 30 - drafting.stats.accepted_draft_tokens
