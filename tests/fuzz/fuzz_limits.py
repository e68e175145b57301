"""What the fuzz tests share at collection time: the small limits of the fuzzed app, and its operations."""

from __future__ import annotations

from functools import cache

from service.config import Settings

# Small enough that any request the validators accept runs in well under a second on two shared cores;
# anything beyond them must be refused with a 4xx.
FUZZ_LIMITS: dict[str, object] = {
    "max_new_tokens": 4,
    "default_max_new_tokens": 4,
    "max_prompt_tokens": 64,
    "max_text_chars": 2000,
    "max_top_k": 20,
    "max_top_alternatives": 3,
    "max_stop_sequences": 4,
    "digits_max_batch": 4,
    "max_body_bytes": 256 * 1024,
    "digits_max_image_bytes": 128 * 1024,
    "digits_max_image_pixels": 1_000_000,
    "api_keys": [],
    "cors_origins": [],
    "log_prompts": False,
}


def fuzz_settings() -> Settings:
    return Settings(**FUZZ_LIMITS)  # type: ignore[arg-type]


def _constraints(schema: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in schema.items() if key not in ("title", "description", "examples")}


@cache
def operations() -> list[tuple[str, str, str | None, bool]]:
    """(method, path, request media type or None, violable) for every operation in the app's schema;
    violable: some input can break the schema (a body, or a parameter that is not a free-form string).

    Read from an app built without models (the schema does not depend on them), so that pytest can
    parametrize at collection time; the tests themselves fetch `/openapi.json` from the running app."""
    from service.app import create_app

    found = []
    for path, item in create_app(fuzz_settings()).openapi()["paths"].items():
        for method, operation in item.items():
            media_types = list(operation.get("requestBody", {}).get("content", {})) or [None]
            content = operation.get("requestBody", {}).get("content", {})
            parameters_violable = any(
                _constraints(parameter.get("schema", {})) != {"type": "string"}
                for parameter in operation.get("parameters", [])
            )
            for media in media_types:
                # Any bytes are a valid `format: binary` body: only the parameters can break the schema then.
                body_violable = media is not None and content[media].get("schema", {}).get("format") != "binary"
                found.append((method.upper(), path, media, body_violable or parameters_violable))
    return found
