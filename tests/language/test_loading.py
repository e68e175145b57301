"""Loading (service/language/loading.py): which weights and dtype `auto` picks, and that the process keeps one
copy of the weights: the lean decoder's. transformers' module is shape-only once the decoder holds them
(for the GGUF's own low-bit weights never loaded, nor built unless asked for), and `LanguageModel.module()` loads it again for
the paths that run it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny_llama

from service.config import Settings
from service.language import loading, lowbit
from service.language.llama_decoder import LlamaDecoder
from service.language.loading import ModelSource, embedded_gguf_path, load_language_model
from service.language.lowbit import GgufWeights
from service.language.model import LanguageModel

GGUF_SOURCE = ModelSource("m", "folder", "a GGUF file", gguf=Path("m.gguf"))
FOLDER_SOURCE = ModelSource("m", "folder", "a folder")
CPU = torch.device("cpu")


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of parameters that hold data (meta tensors hold none)."""
    return sum(p.numel() * p.element_size() for p in module.parameters() if p.device.type != "meta")


@pytest.mark.parametrize(
    ("setting", "source", "lean", "native_bf16", "kernels", "expected"),
    [
        ("auto", GGUF_SOURCE, True, True, True, Path("m.gguf")),
        ("auto", GGUF_SOURCE, True, False, True, None),  # bfloat16 emulated: not measured, dense
        ("auto", FOLDER_SOURCE, True, True, True, None),  # no GGUF: its own weights
        ("auto", GGUF_SOURCE, False, True, True, None),  # the low-bit weights run in the lean decoder only
        ("auto", GGUF_SOURCE, True, True, False, None),  # no int4 kernels in this torch
        ("gguf", GGUF_SOURCE, True, False, True, Path("m.gguf")),  # asked for: taken where it runs at all
        ("gguf", FOLDER_SOURCE, True, True, True, None),
        ("dense", GGUF_SOURCE, True, True, True, None),
    ],
)
def test_which_weights_each_setting_runs(
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
    source: ModelSource,
    lean: bool,
    native_bf16: bool,
    kernels: bool,
    expected: Path | None,
) -> None:
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: native_bf16)
    monkeypatch.setattr(lowbit, "int4_kernels_available", lambda: kernels)
    assert loading.resolve_weights(setting, source, CPU, lean) == expected
    assert loading.resolve_weights(setting, source, torch.device("cuda"), lean) is None  # int4 kernels: CPU


def test_auto_dtype_is_float32_under_the_low_bit_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: True)
    assert loading.resolve_dtype("auto", CPU, low_bit=True) == torch.float32
    assert loading.resolve_dtype("auto", CPU) == torch.bfloat16
    assert loading.resolve_dtype("bfloat16", CPU, low_bit=True) == torch.bfloat16  # asked for: kept


@pytest.fixture(scope="module")
def lowbit_default(settings: Settings) -> LanguageModel:
    """The embedded model as `make serve` loads it on a CPU with native bfloat16 (and int4 kernels)."""
    return load_language_model(settings.lm_model, cache_dir=settings.cache_dir, weights="gguf")


def test_the_low_bit_path_never_loads_transformers_weights_nor_builds_its_module(
    lowbit_default: LanguageModel,
) -> None:
    lm = lowbit_default
    assert lm.dtype == torch.float32 and lm.gguf_weights == embedded_gguf_path()
    # Serving needs neither the module nor transformers' modeling code (over a second to import): /info and
    # the vocabulary come from the config, the count of parameters from the decoder's shapes.
    info = lm.describe()
    assert lm.built_module is None and lm.vocab_size == 49152
    assert info["weights"] == "gguf" and info["architecture"] == "LlamaForCausalLM"
    decoder = LlamaDecoder.shared(lm)
    assert decoder is lm.weights_holder and decoder.weights == "gguf" and lm.built_module is None
    # Asked for, the module is built shape-only (weights on the meta device), and agrees with what was reported.
    assert weight_bytes(lm.model) == 0 and lm.weights_released and lm.built_module is not None
    assert lm.model.config.num_hidden_layers == 30 and lm.model.get_input_embeddings().weight.shape[0] == 49152
    assert info["parameters"] == sum(p.numel() for p in lm.model.parameters()) > 100_000_000
    assert type(lm.model).__name__ == info["architecture"]
    # RoPE's frequencies, which the decoder computes from the config, are transformers' own.
    rotary = lm.model.model.rotary_emb
    assert decoder.inv_freq.device.type == "cpu" and torch.equal(decoder.inv_freq, rotary.inv_freq.float())
    assert decoder.rope_scaling == rotary.attention_scaling


def test_the_decoder_counts_the_parameters_transformers_counts(language_model: LanguageModel, tmp_path: Path) -> None:
    """The embedded model (output head tied to the embedding) and a tiny Llama with its own head."""
    tiny = load_language_model(str(save_tiny_llama(tmp_path)), dtype="float32", cache_dir=tmp_path)
    for lm in (language_model, tiny):
        assert LlamaDecoder.shared(lm).parameter_count() == sum(p.numel() for p in lm.module().parameters())
        assert lm.describe()["parameters"] == lm.parameter_count
    assert not tiny.config.tie_word_embeddings and language_model.config.tie_word_embeddings


def test_module_loads_the_de_quantized_weights_again_on_demand(lowbit_default: LanguageModel) -> None:
    module = lowbit_default.module()
    assert module is lowbit_default.module()  # loaded once, then kept
    assert module is not lowbit_default.model and weight_bytes(module) > 0
    gguf = GgufWeights(embedded_gguf_path())
    expected = gguf.dequantized("blk.0.ffn_down.weight")
    assert torch.equal(module.model.layers[0].mlp.down_proj.weight.detach(), expected)


def test_the_dense_path_keeps_one_copy_the_decoders(language_model: LanguageModel) -> None:
    """The session's model (float32, dense): the decoder packed the weights, the module let go of its own."""
    assert language_model.gguf_weights is None and language_model.weights_released
    assert weight_bytes(language_model.model) == 0
    decoder = LlamaDecoder.shared(language_model)
    assert decoder is language_model.weights_holder and decoder.weights == "dense"
    ids = torch.tensor([language_model.encode("The capital of France is")])
    with torch.inference_mode():
        reference = language_model.module()(input_ids=ids).logits[0, -1].float()
        lean = decoder.forward(ids, torch.arange(ids.shape[1])[None], decoder.new_cache(1, ids.shape[1]), None)[0, -1]
    assert torch.allclose(lean, reference, atol=1e-4, rtol=1e-4)


def test_without_the_lean_decoder_the_module_keeps_its_weights(settings: Settings) -> None:
    lm = load_language_model(settings.lm_model, dtype="float32", cache_dir=settings.cache_dir, lean=False)
    assert lm.gguf_weights is None and not lm.weights_released  # auto: low-bit needs the lean decoder
    assert lm.module() is lm.model and weight_bytes(lm.model) > 0


def test_the_packed_low_bit_weights_are_kept_for_the_next_start(lowbit_default: LanguageModel) -> None:
    assert lowbit_default.lowbit_cache is not None and lowbit_default.lowbit_cache.is_file()
    assert lowbit_default.lowbit_cache.parent.name.startswith(embedded_gguf_path().stem)


@pytest.fixture(scope="module")
def packed_now() -> lowbit.PackedState:
    return lowbit.read_llama_state(GgufWeights(embedded_gguf_path()), 30, 9, 3)


def same_state(a: lowbit.PackedState, b: lowbit.PackedState) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_cached_state_is_the_state_packed_now(tmp_path: Path, packed_now: lowbit.PackedState) -> None:
    cache = tmp_path / "lowbit.pt"
    first = lowbit.packed_state(embedded_gguf_path(), cache, 30, 9, 3)  # packs and keeps it
    assert cache.is_file() and same_state(first, packed_now)
    written = cache.stat().st_mtime_ns
    second = lowbit.packed_state(embedded_gguf_path(), cache, 30, 9, 3)  # read back, not packed again
    assert cache.stat().st_mtime_ns == written and same_state(second, packed_now)
    assert sum(key.endswith(".packed") for key in second) == 4 * 30 and "embed.q" in second


@pytest.mark.parametrize("damage", ["garbage", "another format", "another torch"])
def test_a_damaged_or_foreign_cache_is_packed_again(
    tmp_path: Path, packed_now: lowbit.PackedState, damage: str
) -> None:
    cache = tmp_path / "lowbit.pt"
    about = {"format": lowbit.STATE_FORMAT, "torch": str(torch.__version__), "layers": 30}
    if damage == "garbage":
        cache.write_bytes(b"\x80not a torch file")
    else:
        about["format" if damage == "another format" else "torch"] = "other"
        torch.save({"about": about, "state": {"head": torch.zeros(1)}}, cache)
    state = lowbit.packed_state(embedded_gguf_path(), cache, 30, 9, 3)
    assert same_state(state, packed_now)
    assert same_state(torch.load(cache, weights_only=True)["state"], packed_now)  # and kept, replaced


def test_an_unwritable_cache_only_costs_the_packing(tmp_path: Path, packed_now: lowbit.PackedState) -> None:
    """The cache cannot be written (its folder is a file here: a read-only folder does not stop root)."""
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    state = lowbit.packed_state(embedded_gguf_path(), not_a_folder / "lowbit.pt", 30, 9, 3)
    assert same_state(state, packed_now) and not_a_folder.read_text() == ""


def test_provisioning_packs_the_low_bit_weights_where_they_will_run(settings: Settings) -> None:
    """`python -m service provision` (make serve's step) packs them, so the first start is a fast one too."""
    source = loading.resolve_model_source(settings.lm_model, settings.cache_dir)
    cache = loading.provision_low_bit_weights(source, "gguf", "cpu", True, settings.cache_dir)
    assert cache is not None and cache.is_file()
    state = lowbit.packed_state(embedded_gguf_path(), cache, 30, 9, 3)
    assert sum(key.endswith(".packed") for key in state) == 4 * 30
    assert loading.provision_low_bit_weights(source, "dense", "cpu", True, settings.cache_dir) is None
    assert loading.provision_low_bit_weights(source, "gguf", "cpu", False, settings.cache_dir) is None


def test_serving_the_low_bit_weights_imports_none_of_transformers_llama_code(settings: Settings) -> None:
    """In a fresh process: load the embedded model as `make serve` does and answer /info's question; neither
    the Llama config class nor the modeling code (together ~2 s and ~60 MB to import here) is imported."""
    import subprocess
    import sys

    probe = (
        "import sys; from service.language.loading import load_language_model; "
        f"lm = load_language_model({settings.lm_model!r}, cache_dir=__import__('pathlib').Path({str(settings.cache_dir)!r}), weights='gguf'); "
        "lm.describe(); print(lm.gguf_weights is not None, sorted(m for m in sys.modules if 'llama' in m and m.startswith('transformers')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True).stdout
    assert out.split()[:1] == ["True"] and out.strip().endswith("[]"), out


@pytest.mark.parametrize("which", ["embedded", "tiny-llama"])
def test_the_direct_tokenizer_is_the_one_autotokenizer_builds(
    which: str, language_model: LanguageModel, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    folder = Path(language_model.tokenizer.name_or_path) if which == "embedded" else save_tiny_llama(tmp_path)
    source = ModelSource(str(folder), str(folder), "a folder")
    direct, auto = loading._load_tokenizer(source), AutoTokenizer.from_pretrained(str(folder))
    assert type(direct) is type(auto) and direct.all_special_ids == auto.all_special_ids and len(direct) == len(auto)
    for text in [
        "The capital of France is",
        " two  spaces\n\nand lines ",
        "ünïcödé 日本語 🤖",
        "<|im_start|>x<|endoftext|>",
    ]:
        assert direct(text)["input_ids"] == auto(text)["input_ids"]
    if auto.chat_template:
        chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]
        assert direct.apply_chat_template(chat, tokenize=False) == auto.apply_chat_template(chat, tokenize=False)
