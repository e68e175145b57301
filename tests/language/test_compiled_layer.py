"""The compiled decoder layer (service/language/compiled_layer.py) against the eager one it compiles.

- One layer, same inputs: the compiled call writes the same keys and values and returns the same residual
  stream as `decoder_layer`, within float rounding, for every shape the engine hands it: one row or many,
  one token or a prompt, caches of other capacities, and row ranges of a larger cache (its row stride).
- The decoder's forward falls back to the eager layer where an input is laid out otherwise than traced, or a
  position is out of range (the compiled bounds checks would abort the process instead of raising).
- Loading: a library is keyed by what its code depends on; an unreadable one is compiled again; without a
  C++ compiler, or where the probe disagrees, the decoder runs eagerly and says so.
The fidelity of the whole path (next tokens against float32, batched against alone, greedy through the
engine) is in test_lowbit.py, "float32-compiled".
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from service.config import Settings
from service.language import compiled_layer
from service.language.llama_decoder import LlamaDecoder, decoder_layer
from service.language.loading import load_language_model
from service.language.model import LanguageModel

pytestmark = pytest.mark.skipif(
    not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"), reason="this torch has no CPU int4 kernels"
)
THREADS = 2


@pytest.fixture(scope="module")
def compiled_model(settings: Settings) -> LanguageModel:
    return load_language_model(
        settings.lm_model, dtype="float32", cache_dir=settings.cache_dir, weights="gguf", compiled_step=THREADS
    )


@pytest.fixture(scope="module")
def decoder(compiled_model: LanguageModel) -> LlamaDecoder:
    decoder = LlamaDecoder.shared(compiled_model)
    assert decoder.compiled is not None, "the compiled layer did not load (see the log)"
    return decoder


def layer_inputs(
    decoder: LlamaDecoder, n: int, tokens: int, span: int, generator: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """x, cos, sin, mask, rows, positions for n rows of `tokens` new tokens, the last of them at span - 1."""
    hidden = decoder.norm_attn[0].shape[0]
    ends = torch.randint(tokens, span + 1, (n,), generator=generator)
    ends[0] = span  # the visible span is the longest row's
    positions = ends[:, None] - tokens + torch.arange(tokens)[None]
    cos, sin, mask = decoder.rope_and_mask(positions, span)
    x = torch.randn(n, tokens, hidden, generator=generator)
    return x, cos, sin, mask, torch.arange(n)[:, None], positions


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    difference = (got - want).abs()
    return bool(difference.max() <= 1e-2 * want.abs().max() and difference.mean() <= 5e-3 * want.abs().mean())


@pytest.mark.parametrize(
    ("n", "rows", "start", "tokens", "span", "capacity"),
    [
        (1, 1, 0, 1, 1, 16),  # the first token of a sequence
        (1, 1, 0, 1, 50, 128),  # one row decoding
        (1, 4, 3, 1, 50, 128),  # the last row of a larger cache
        (3, 8, 2, 1, 77, 256),  # a row range in the middle
        (2, 2, 0, 5, 20, 64),  # a prompt of 5 tokens, two rows
        (4, 6, 2, 7, 300, 512),  # prompts into part of a larger cache
        (16, 16, 0, 1, 200, 256),  # a full batch decoding
        (1, 1, 0, 130, 130, 2048),  # one long prompt
    ],
)
def test_the_compiled_layer_computes_the_eager_layer(
    decoder: LlamaDecoder, n: int, rows: int, start: int, tokens: int, span: int, capacity: int
) -> None:
    generator = torch.Generator().manual_seed(n * 1000 + span)
    x, cos, sin, mask, row_ids, positions = layer_inputs(decoder, n, tokens, span, generator)
    g = decoder.geometry
    full = torch.randn(decoder.layers, 2, rows, g.kv_heads, capacity, g.head_dim, generator=generator)
    eager_cache, compiled_cache = full.clone(), full.clone()
    assert decoder.compiled is not None
    with torch.inference_mode():
        for layer in (0, decoder.layers - 1):
            eager_view = eager_cache[:, :, start : start + n]
            compiled_view = compiled_cache[:, :, start : start + n]
            want = decoder_layer(
                g, x, cos, sin, mask, eager_view[layer], row_ids, positions, decoder.layer_weights(layer)
            )
            got = decoder.compiled(layer, x, cos, sin, mask, compiled_view[layer], row_ids, positions)
            assert got.shape == want.shape == x.shape
            # Float rounding only: the fused loops sum in another order, which can flip bfloat16 roundings of
            # a product's input, and every output of that product moves a little (measured: at most 2.3e-3 of
            # the largest value and 2.4e-3 of the mean, in the last layer over a 130-token prompt); a wrong
            # index or stride is off by about the values themselves.
            assert close(got, want), f"layer {layer}"
            assert close(compiled_cache, eager_cache)
    # Written only at the rows' positions: everything else in the larger cache is as it was.
    written = torch.zeros(full.shape, dtype=torch.bool)
    for b in range(n):
        written[:, :, start + b, :, positions[b]] = True
    assert torch.equal(compiled_cache[~written], full[~written])
    assert not torch.equal(compiled_cache[0][written[0]], full[0][written[0]])


def test_forward_over_the_compiled_layers_gives_the_eager_logits(
    compiled_model: LanguageModel, decoder: LlamaDecoder
) -> None:
    ids = torch.tensor([compiled_model.encode("The capital of France is")])
    positions = torch.arange(ids.shape[1])[None]
    last = torch.tensor([ids.shape[1] - 1])
    compiled = decoder.compiled
    with torch.inference_mode():
        got = decoder.forward(ids, positions, decoder.new_cache(1, 32), last)
        decoder.compiled = None
        try:
            want = decoder.forward(ids, positions, decoder.new_cache(1, 32), last)
        finally:
            decoder.compiled = compiled
    assert int(got.argmax()) == int(want.argmax()) == compiled_model.encode(" Paris")[0]
    assert float((torch.softmax(got, -1) - torch.softmax(want, -1)).abs().max()) < 0.02


def test_positions_laid_out_otherwise_are_made_contiguous(decoder: LlamaDecoder) -> None:
    """An expanded positions tensor (stride 0 along the rows, as `arange(S)[None].expand(n, S)` gives) read
    with the traced contiguous layout would index past the cache: it is copied first, and gives what a
    contiguous one gives."""
    ids = torch.randint(0, 1000, (4, 6), generator=torch.Generator().manual_seed(1))
    expanded = torch.arange(6)[None].expand(4, 6)
    last = torch.full((4,), 5)
    with torch.inference_mode():
        a = decoder.forward(ids, expanded, decoder.new_cache(4, 16), last)
        b = decoder.forward(ids, expanded.contiguous(), decoder.new_cache(4, 16), last)
    assert torch.equal(a, b)


def test_an_out_of_range_position_raises_instead_of_aborting(decoder: LlamaDecoder) -> None:
    """The eager layer's indexing raises; the compiled one's bounds check would abort the process (it throws
    inside an OpenMP loop), so the decoder does not hand it such a position. This test process surviving is
    half the assertion."""
    ids = torch.tensor([[1, 2]])
    with torch.inference_mode(), pytest.raises((IndexError, RuntimeError)):
        decoder.forward(ids, torch.tensor([[7, 8]]), decoder.new_cache(1, 8), torch.tensor([1]))
    with torch.inference_mode():
        assert decoder.forward(ids, torch.tensor([[6, 7]]), decoder.new_cache(1, 8), torch.tensor([1])).shape[0] == 1


def test_a_cache_of_another_layout_runs_the_eager_layer(decoder: LlamaDecoder) -> None:
    """A cache whose heads are not laid out as traced (here: capacity and heads swapped) is refused by
    `_compiled_for`, and the forward computes the same logits eagerly."""
    g = decoder.geometry
    odd = torch.zeros(decoder.layers, 2, 1, 16, g.kv_heads, g.head_dim).transpose(3, 4)  # same shape, other strides
    assert odd.shape == decoder.new_cache(1, 16).shape
    positions = torch.arange(3)[None]
    assert decoder._compiled_for(positions, odd, 3) is None
    assert decoder._compiled_for(positions, decoder.new_cache(1, 16), 3) is decoder.compiled
    ids = torch.tensor([[5, 6, 7]])
    with torch.inference_mode():
        got = decoder.forward(ids, positions, odd, torch.tensor([2]))
        want = decoder.forward(ids, positions, decoder.new_cache(1, 16), torch.tensor([2]))
    assert close(got, want)


def test_the_library_is_keyed_by_what_its_code_depends_on(decoder: LlamaDecoder, tmp_path: Path) -> None:
    one, two = compiled_layer.library_path(decoder, tmp_path, 1), compiled_layer.library_path(decoder, tmp_path, 2)
    assert one != two and one.parent == tmp_path and one.suffix == ".pt2"
    assert compiled_layer.library_path(decoder, tmp_path, 2) == two


def test_an_unreadable_library_is_compiled_again(
    decoder: LlamaDecoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A truncated library (a copy cut short) fails to load and is compiled again in its place. The compile
    here copies the good library in (a real compile is what `decoder` loaded: 15-40 s)."""
    assert decoder.compiled is not None
    good = decoder.compiled.path  # type: ignore[attr-defined]
    target = compiled_layer.library_path(decoder, tmp_path, THREADS)
    target.write_bytes(good.read_bytes()[:1000])
    compiles: list[Path] = []

    def compile_by_copy(dec: LlamaDecoder, path: Path, threads: int) -> None:
        compiles.append(path)
        shutil.copyfile(good, path)

    monkeypatch.setattr(compiled_layer, "compile_layer", compile_by_copy)
    with caplog.at_level(logging.INFO, logger="service.language"):
        loaded = compiled_layer.load_or_compile(decoder, tmp_path, THREADS)
    assert loaded is not None and compiles == [target]
    assert "unreadable" in caplog.text


def test_without_a_compiler_the_eager_layer_runs(
    decoder: LlamaDecoder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real compile with a C++ compiler that does not exist: the export and code generation run, the build
    fails, and the decoder is told to run eagerly, with a warning naming the failure."""
    import torch._inductor.config as inductor_config

    with (
        inductor_config.patch({"cpp.cxx": (None, str(tmp_path / "no-such-c++"))}),
        caplog.at_level(logging.INFO, logger="service.language"),
    ):
        assert compiled_layer.load_or_compile(decoder, tmp_path, THREADS + 5) is None
    assert "compiled step: unavailable" in caplog.text
    assert not list(tmp_path.glob("*.pt2"))  # nothing half-written is left for the next start to trust


def test_a_library_that_disagrees_with_the_eager_layer_is_not_used(
    decoder: LlamaDecoder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert decoder.compiled is not None
    folder = decoder.compiled.path.parent  # type: ignore[attr-defined]
    monkeypatch.setattr(compiled_layer, "_reproduces_eager", lambda compiled, dec: 0.5)
    with caplog.at_level(logging.INFO, logger="service.language"):
        assert compiled_layer.load_or_compile(decoder, folder, THREADS) is None
    assert "differs from the eager layer" in caplog.text


def test_off_and_dense_weights_run_eagerly(settings: Settings, language_model: LanguageModel) -> None:
    """GENAI_COMPILED_STEP=off (compiled_step=0) and dense weights: no compiled layer, /info says so."""
    off = load_language_model(settings.lm_model, dtype="float32", cache_dir=settings.cache_dir, weights="gguf")
    assert LlamaDecoder.shared(off).compiled is None and off.describe()["compiled_step"] is False
    assert LlamaDecoder.shared(language_model).compiled is None  # the session's dense float32 model
    assert language_model.describe()["compiled_step"] is False


def test_info_reports_the_compiled_step(compiled_model: LanguageModel, decoder: LlamaDecoder) -> None:
    assert compiled_model.describe()["compiled_step"] is True
