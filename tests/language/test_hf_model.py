"""The Hugging Face path: GENAI_LM_MODEL = a model folder. A tiny GPT-2 that the test builds itself
(config, random weights, a byte-level BPE tokenizer trained on a few sentences) stands in for `gpt2`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import torch
from tiny_models import SENTENCES, save_tiny_gpt2, serve_folder

from service.config import Settings
from service.language.loading import ModelLoadError, load_language_model, resolve_model_source


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # tiny_models sits beside the tests, outside the checker's import path: its return type is restated here
    folder: Path = save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))
    return folder


@pytest.fixture(scope="module")
async def tiny_client(tiny_gpt2_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_folder(tiny_gpt2_dir) as client:
        yield client


async def test_a_model_folder_is_served(tiny_client: httpx.AsyncClient, tiny_gpt2_dir: Path) -> None:
    info = (await tiny_client.get("/info")).json()["language_model"]
    assert info["model_id"] == tiny_gpt2_dir.name
    assert info["architecture"] == "GPT2LMHeadModel"
    assert info["context_length"] == 64
    tokens = (await tiny_client.post("/tokenize", json={"text": "Hello, world!"})).json()
    assert (await tiny_client.post("/detokenize", json={"ids": tokens["ids"]})).json()["text"] == "Hello, world!"


async def test_tiny_model_greedy_equals_its_generate(tiny_client: httpx.AsyncClient, tiny_gpt2_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    prompts = ["The capital", "Once upon a time there", "Hello"]
    import asyncio

    responses = await asyncio.gather(
        *(tiny_client.post("/generate", json={"prompt": p, "max_new_tokens": 10, "ignore_eos": True}) for p in prompts)
    )
    for prompt, response in zip(prompts, responses, strict=True):
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        with torch.inference_mode():
            expected = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=10,
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
            )
        body = response.json()
        assert body["ids"][: expected.shape[1] - ids.shape[1]] == expected[0, ids.shape[1] :].tolist()
    probs = (await tiny_client.post("/next-token-probs", json={"prompt": "Hello", "top_k": 5})).json()
    assert len(probs["candidates"]) == 5


async def test_prompt_and_new_tokens_must_fit_the_context(tiny_client: httpx.AsyncClient) -> None:
    count = (await tiny_client.post("/tokenize", json={"text": "Hello, world!"})).json()["count"]
    fits = await tiny_client.post("/generate", json={"prompt": "Hello, world!", "max_new_tokens": 64 - count})
    assert fits.status_code == 200
    response = await tiny_client.post("/generate", json={"prompt": "Hello, world!", "max_new_tokens": 65 - count})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "max_new_tokens" and "context of 64" in error["message"]
    long_prompt = " ".join(SENTENCES[:8])
    response = await tiny_client.post("/tokenize", json={"text": long_prompt})
    assert response.json()["count"] > 63
    response = await tiny_client.post("/next-token-probs", json={"prompt": long_prompt})
    assert response.status_code == 422 and response.json()["error"]["param"] == "prompt"


def test_a_gguf_path_resolves_to_the_cached_conversion(settings: Settings) -> None:
    from service.language.loading import embedded_gguf_path

    embedded = resolve_model_source("", settings.cache_dir)
    by_path = resolve_model_source(str(embedded_gguf_path()), settings.cache_dir)
    assert by_path.path_or_id == embedded.path_or_id
    assert (Path(by_path.path_or_id) / "model.safetensors").is_file()


def test_missing_local_paths_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no such \.gguf file"):
        load_language_model(str(tmp_path / "nope.gguf"), cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"without config\.json"):
        load_language_model(str(tmp_path / "empty"), cache_dir=tmp_path)


def test_unreachable_hub_model_fails_start_up_with_advice_not_a_traceback(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "GENAI_LM_MODEL": "no-such-org/no-such-model",
        "HF_HUB_OFFLINE": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--port", "1"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "no-such-org/no-such-model" in result.stderr
    assert "HF_HUB_OFFLINE" in result.stderr and "GENAI_LM_MODEL" in result.stderr
    assert "Traceback" not in result.stderr
