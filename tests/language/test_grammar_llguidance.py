"""The llguidance backend over the embedded model's tokenizer, without the engine: masks allow exactly the
tokens that keep a text valid, the end only where it is whole, drafts are cut where they stop being
valid, and what cannot be compiled is a GrammarError with llguidance's reason."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from service.language.grammar import Constraint, GrammarError, GrammarState
from service.language.grammar_llguidance import LLGuidanceBackend

if TYPE_CHECKING:
    from service.language.model import LanguageModel


@pytest.fixture(scope="module")
def backend(language_model: LanguageModel) -> LLGuidanceBackend:
    return LLGuidanceBackend(language_model)


def walk(lm: LanguageModel, backend: LLGuidanceBackend, constraint: Constraint, text: str) -> GrammarState:
    """Feed `text`'s tokens through a fresh matcher, each checked against the mask before it is taken."""
    state = GrammarState(backend.compile(constraint).new_matcher(), lm.eos_token_ids)
    for token in lm.encode(text):
        assert bool(state.allowed()[token]), (text, lm.token_text(token))
        state.advance(token)
    return state


def test_a_valid_document_is_allowed_token_by_token(language_model: LanguageModel, backend: LLGuidanceBackend) -> None:
    schema = {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b"]}}, "n": {"type": "number"}},
        "required": ["tags", "n"],
    }
    document = json.dumps({"tags": ["a", "b"], "n": 2.5})
    state = walk(language_model, backend, Constraint.json_schema(schema, "json_schema"), document)
    assert state.finished and not state.failed  # the object is closed: nothing may follow
    eos = sorted(language_model.eos_token_ids)
    assert state.allowed().nonzero().flatten().tolist() == [e for e in eos if e < language_model.vocab_size]


def test_masks_refuse_what_breaks_the_text(language_model: LanguageModel, backend: LLGuidanceBackend) -> None:
    state = GrammarState(
        backend.compile(Constraint("regex", "[0-9]{3}", "regex")).new_matcher(), language_model.eos_token_ids
    )
    mask = state.allowed()
    assert 10 <= int(mask.sum()) < 2000  # digits and short digit runs, nothing else
    assert not any(bool(mask[e]) for e in language_model.eos_token_ids)  # not whole yet: no end
    for token in mask.nonzero().flatten().tolist()[:50]:
        assert language_model.token_text(token).isdigit()
    for token in language_model.encode("123"):
        state.advance(token)
    assert state.finished


def test_choices_and_drafts(language_model: LanguageModel, backend: LLGuidanceBackend) -> None:
    constraint = Constraint("choice", (" yes", " no", " yes please"), "choice")
    state = walk(language_model, backend, constraint, " yes")
    assert not state.finished and any(bool(state.allowed()[e]) for e in language_model.eos_token_ids)
    fresh = GrammarState(backend.compile(constraint).new_matcher(), language_model.eos_token_ids)
    draft = language_model.encode(" yes please thank you")
    assert fresh.valid_prefix(draft) == language_model.encode(" yes please")


@pytest.mark.parametrize(
    ("constraint", "reason"),
    [
        (Constraint("regex", "(unclosed", "regex"), "unclosed group"),
        (
            Constraint.json_schema({"type": "object", "properties": {"a": {"type": "nonsense"}}}, "json_schema"),
            "nonsense",
        ),
        (Constraint.json_schema({"type": "array", "uniqueItems": True}, "json_schema"), "uniqueItems"),
        (Constraint.json_schema({"$ref": "#/$defs/missing"}, "json_schema"), "does not exist"),
    ],
)
def test_what_cannot_be_compiled_says_why(backend: LLGuidanceBackend, constraint: Constraint, reason: str) -> None:
    with pytest.raises(GrammarError) as refused:
        backend.compile(constraint)
    assert reason.lower() in str(refused.value).lower()
