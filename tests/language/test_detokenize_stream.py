"""TextAssembler: streamed increments are whole characters and never the start of a stop string."""

from __future__ import annotations

from service.language.detokenize import TextAssembler
from service.language.model import LanguageModel


def stream(language_model: LanguageModel, text: str, stop: tuple[str, ...] = ()) -> tuple[list[str], TextAssembler]:
    assembler = TextAssembler(language_model.tokenizer, language_model.eos_token_ids, stop)
    pieces = [assembler.push(token_id) for token_id in language_model.encode(text)]
    pieces.append(assembler.flush())
    return pieces, assembler


def test_multibyte_characters_are_never_split(language_model: LanguageModel) -> None:
    text = "Emoji 🙂🎉 and 日本語 text"
    ids = language_model.encode(text)
    # The test means something only if some token prefix decodes to a broken character.
    assert any("\ufffd" in language_model.detokenize(ids[:n]) for n in range(1, len(ids)))
    pieces, assembler = stream(language_model, text)
    assert "".join(pieces) == text == assembler.text
    assert all("\ufffd" not in piece for piece in pieces)


def test_stop_string_is_never_streamed(language_model: LanguageModel) -> None:
    text = "alpha beta STOP gamma"
    pieces, assembler = stream(language_model, text, stop=("STOP",))
    assert assembler.stopped
    assert "".join(pieces) == "alpha beta " == assembler.text
    assert not any("S" in piece for piece in pieces)


def test_end_of_sequence_adds_no_text(language_model: LanguageModel) -> None:
    assembler = TextAssembler(language_model.tokenizer, language_model.eos_token_ids)
    eos = next(iter(language_model.eos_token_ids))
    pieces = [assembler.push(t) for t in language_model.encode("Done.")] + [assembler.push(eos), assembler.flush()]
    assert "".join(pieces) == "Done."
