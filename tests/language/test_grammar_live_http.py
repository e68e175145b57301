"""The grammar compile time limit over real HTTP (uvicorn in a thread, the session's models, the real llguidance)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from servers import serve

from service.config import Settings
from service.state import LoadedModels

pytestmark = pytest.mark.slow

# 1,024 strings (the most a choice may hold): with the library's first view of the 49,152-token vocabulary
# (about a second on this machine) the first compile takes far longer than the limit below.
CHOICES = [f" option {n} of the long list" for n in range(1024)]


@pytest.fixture(scope="module")
def impatient_server(settings: Settings, loaded_models: LoadedModels) -> Iterator[str]:
    """The service with a 10 ms compile limit, its own engine (so its own, not yet built, grammar backend)."""
    with serve(settings.model_copy(update={"grammar_compile_timeout_s": 0.01}), loaded_models) as base:
        yield base


def test_a_compile_past_the_limit_is_refused_naming_the_field_and_the_retry_gets_it(impatient_server: str) -> None:
    with httpx.Client(base_url=impatient_server, timeout=60) as http:
        body = {"prompt": "Pick one:", "max_new_tokens": 12, "choice": CHOICES}
        refused = http.post("/generate", json=body)
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["param"] == "choice" and "GENAI_GRAMMAR_COMPILE_TIMEOUT_S" in error["message"]

        # meanwhile (the compile still running on its thread) the service answers everything else
        assert http.get("/health").status_code == 200
        plain = http.post("/generate", json={"prompt": "The capital of France is", "max_new_tokens": 4})
        assert plain.status_code == 200 and plain.json()["usage"]["completion_tokens"] == 4

        deadline = time.monotonic() + 30
        while (answered := http.post("/generate", json=body)).status_code == 422 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert answered.status_code == 200, answered.text
        assert answered.json()["text"] in CHOICES and answered.json()["finish_reason"] == "stop"

        # /v1's name for the same constraint reads the same compiled grammar
        v1 = http.post(
            "/v1/completions",
            json={"model": "SmolLM2-135M-Instruct", "prompt": "Pick one:", "max_tokens": 12, "guided_choice": CHOICES},
        )
        assert v1.status_code == 200, v1.text
        assert v1.json()["choices"][0]["text"] in CHOICES
