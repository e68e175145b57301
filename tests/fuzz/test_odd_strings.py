"""Odd code points in every string field of every JSON body the OpenAPI schema declares: lone UTF-16
surrogates, NULs, control and private-use characters, unassigned code points. None may give a 5xx, and a
string that cannot be encoded as UTF-8 must be refused with a 4xx that names its field.

The string fields are found by walking the app's own `/openapi.json` (so a new route or field is covered
without touching this file); each is set, in a real example body of its operation, to strings drawn by
hypothesis, and the body is sent as JSON (`json.dumps` escapes a surrogate as `\\ud800`, as clients do).
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fuzz_limits import fuzz_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

Path = tuple[str | int, ...]


def _resolve(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def string_paths(
    schema: dict[str, Any], components: dict[str, Any], prefix: Path = (), depth: int = 0
) -> Iterator[Path]:
    """Every place in a body that the schema lets hold a string (a list's strings at index 0; a map's
    strings under the key "k"), following $refs, unions and nested objects."""
    if depth > 6:
        return
    schema = _resolve(schema, components)
    if schema.get("type") == "string" or ("enum" in schema and all(isinstance(v, str) for v in schema["enum"])):
        yield prefix
    for union in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(union, []):
            yield from string_paths(option, components, prefix, depth + 1)
    for name, sub in schema.get("properties", {}).items():
        yield from string_paths(sub, components, (*prefix, name), depth + 1)
    if isinstance(schema.get("items"), dict):
        yield from string_paths(schema["items"], components, (*prefix, 0), depth + 1)
    if isinstance(schema.get("additionalProperties"), dict):
        yield from string_paths(schema["additionalProperties"], components, (*prefix, "k"), depth + 1)


def put(body: Any, path: Path, value: str) -> Any:
    """A copy of `body` with `value` at `path`, creating the containers on the way."""
    root = copy.deepcopy(body) if isinstance(body, dict) else {}
    node: Any = root
    for key, nxt in zip(path, (*path[1:], None), strict=True):
        fresh: Any = value if nxt is None else ([] if isinstance(nxt, int) else {})
        if isinstance(key, int):
            if not isinstance(node, list):
                return root
            if not node:
                node.append(fresh)
            elif nxt is None:
                node[0] = value
            elif not isinstance(node[0], (dict, list)):
                node[0] = fresh
            node = node[0]
        else:
            if not isinstance(node, dict):
                return root
            if nxt is None or not isinstance(node.get(key), (dict, list)):
                node[key] = fresh
            node = node[key]
    return root


def json_cases() -> list[tuple[str, str, list[Any], Path]]:
    """(method, path, example bodies, string path) for every string field of every JSON body; at collection time."""
    from service.app import create_app

    spec = create_app(fuzz_settings()).openapi()
    components = spec.get("components", {}).get("schemas", {})
    cases = []
    for route, item in spec["paths"].items():
        for method, operation in item.items():
            media = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if media is None:
                continue
            schema = media["schema"]
            examples = (
                [e["value"] for e in media.get("examples", {}).values()]
                or list(_resolve(schema, components).get("examples", []))
                or [{}]
            )
            for where in dict.fromkeys(string_paths(schema, components)):
                cases.append((method.upper(), route, examples, where))
    return cases


CASES = json_cases()

odd_text = st.one_of(
    st.sampled_from(["\ud800", "\udfff", "a\udc00b", "\x00", "\x00\ud800", "\ufffe", "\U0010ffff", "\u202e", "\ue000"]),
    st.text(st.characters(categories=["Cs", "Cc", "Co", "Cn", "Zl", "Zp", "Mn"]), min_size=1, max_size=6),
    st.text(min_size=0, max_size=6),
)


def _example_for(examples: list[Any], where: Path) -> Any:
    """The first example that already has the field's top-level key, so the odd string lands deep."""
    return next((e for e in examples if isinstance(e, dict) and where and where[0] in e), examples[0])


def _field_of(where: Path) -> str:
    return ".".join(str(p) for p in where)


@pytest.fixture(scope="module")
async def odd_client(make_app: Callable[[Any], Awaitable[FastAPI]]) -> AsyncIterator[httpx.AsyncClient]:
    application = await make_app(fuzz_settings())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application), base_url="http://odd", timeout=60
    ) as http:
        yield http


def test_the_walk_finds_the_fields_the_issue_names() -> None:
    found = {(route, _field_of(where)) for _, route, _, where in CASES}
    for expected in [
        ("/tokenize", "text"),
        ("/generate", "prompt"),
        ("/generate", "messages.0.content"),
        ("/v1/completions", "prompt"),
        ("/v1/completions", "model"),
        ("/v1/chat/completions", "messages.0.content"),
        ("/v1/chat/completions", "model"),
    ]:
        assert expected in found


@pytest.mark.parametrize(
    ("method", "route", "examples", "where"), CASES, ids=[f"{c[0]} {c[1]} {_field_of(c[3])}" for c in CASES]
)
@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(text=odd_text)
async def test_odd_strings_never_give_a_5xx(
    odd_client: httpx.AsyncClient, method: str, route: str, examples: list[Any], where: Path, text: str
) -> None:
    body = put(_example_for(examples, where), where, text)
    response = await odd_client.request(
        method,
        route.replace("{model_name}", "mnist").replace("{model_version}", "1"),
        content=json.dumps(body),
        headers={"content-type": "application/json"},
    )
    assert response.status_code < 500, (body, response.text)
    assert response.headers["content-type"].startswith(("application/json", "text/event-stream")), response.text
    unencodable = any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)
    if unencodable:
        assert 400 <= response.status_code < 500, (body, response.text)
        if route.startswith("/v2"):  # the Open Inference Protocol's error body is a bare message
            assert "surrogate" in response.json()["error"]
        else:
            error = response.json()["error"]
            # the field named is the one that held the string (or, for an example the string broke first, its parent)
            assert error["param"] and _field_of(where).startswith(error["param"].split(".")[0]), error
