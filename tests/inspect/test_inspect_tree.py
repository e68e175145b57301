"""/inspect/tree: the likeliest continuations, level by level in batched passes over the prompt's cache.
The root's children are /next-token-probs' top tokens; each leaf's total is the log-probability the
model gives its path when prompt + path is scored in one pass."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest
import torch
from inspect_helpers import FORWARD, REFERENCE, SERVED, path_logprob

from service.inspect import continuations
from service.inspect.forward import inspector_for
from service.inspect.limits import TreeParams
from service.inspect.tree import TreeNode, continuation_tree

PROMPT = "The capital of France is"


def walk(
    nodes: list[dict[str, Any]], path: list[int], total: float, depth: int, branching: int
) -> list[tuple[list[int], float]]:
    """Check each level's shape and sums; return every (path, cumulative logprob) at the leaves."""
    assert len(nodes) == branching
    assert [n["probability"] for n in nodes] == sorted((n["probability"] for n in nodes), reverse=True)
    found = []
    for node in nodes:
        assert node["probability"] == pytest.approx(math.exp(node["logprob"]), rel=1e-9)
        assert node["cumulative_logprob"] == pytest.approx(total + node["logprob"], abs=1e-9)
        if depth == 1:
            assert node["children"] == []
            found.append(([*path, node["id"]], node["cumulative_logprob"]))
        else:
            found += walk(node["children"], [*path, node["id"]], node["cumulative_logprob"], depth - 1, branching)
    return found


@pytest.mark.parametrize("name", SERVED)
async def test_the_tree_is_next_token_probs_then_scored_paths(
    served: dict[str, httpx.AsyncClient], references: dict[str, Any], name: str
) -> None:
    client = served[name]
    response = await client.post("/inspect/tree", json={"prompt": PROMPT, "depth": 3, "branching": 3})
    assert response.status_code == 200, response.text
    tree = response.json()
    assert tree["forward"] == FORWARD[name] and tree["nodes"] == 3 + 9 + 27
    probs = (await client.post("/next-token-probs", json={"prompt": PROMPT, "top_k": 3})).json()["candidates"]
    assert [n["id"] for n in tree["children"]] == [c["id"] for c in probs]
    for node, candidate in zip(tree["children"], probs, strict=True):
        assert node["probability"] == pytest.approx(candidate["probability"], abs=1e-5)
        assert node["token"] == candidate["token"]
    leaves = walk(tree["children"], [], 0.0, 3, 3)
    assert len(tree["leaves"]) == 27
    assert sorted((leaf["ids"], leaf["logprob"]) for leaf in tree["leaves"]) == sorted(leaves)
    totals = [leaf["logprob"] for leaf in tree["leaves"]]
    assert totals == sorted(totals, reverse=True)
    prompt = [t["id"] for t in tree["prompt_tokens"]]
    model = references[REFERENCE[name]]
    for leaf in tree["leaves"][:3] + tree["leaves"][-2:]:
        assert leaf["logprob"] == pytest.approx(path_logprob(model, prompt, leaf["ids"]), abs=1e-4)
        text = (await client.post("/detokenize", json={"ids": leaf["ids"]})).json()["text"]
        assert leaf["text"] == text and len(leaf["tokens"]) == 3


def _flatten(nodes: list[TreeNode]) -> list[tuple[int, float, float]]:
    return [item for n in nodes for item in [(n.id, n.logprob, n.cumulative_logprob), *_flatten(n.children)]]


@pytest.mark.parametrize("lean", [True, False])
def test_a_level_split_into_chunks_gives_the_same_tree(
    language_model: Any, monkeypatch: pytest.MonkeyPatch, lean: bool
) -> None:
    """Wide levels run in chunks of bounded cache size; the chunks compute what one pass would."""
    ids, params = language_model.encode(PROMPT), TreeParams(depth=3, branching=3)
    with torch.inference_mode():
        whole = continuation_tree(
            inspector_for(language_model, lean), ids, params, language_model.token_text, language_model.detokenize
        )
        monkeypatch.setattr(continuations, "TREE_CHUNK_POSITIONS", 2 * (len(ids) + 2))  # two rows a chunk
        chunked = continuation_tree(
            inspector_for(language_model, lean), ids, params, language_model.token_text, language_model.detokenize
        )
    got, want = _flatten(chunked.children), _flatten(whole.children)
    assert [g[0] for g in got] == [w[0] for w in want]
    assert [g[2] for g in got] == pytest.approx([w[2] for w in want], abs=1e-4)  # batch shapes round apart


REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"prompt": PROMPT, "depth": 0, "branching": 2}, "depth"),
    ({"prompt": PROMPT, "depth": 2, "branching": 0}, "branching"),
    ({"prompt": PROMPT, "branching": 2}, "depth"),
    ({"prompt": "", "depth": 1, "branching": 1}, "prompt"),
    ({"prompt": PROMPT, "depth": 17, "branching": 1}, "depth"),
    ({"prompt": PROMPT, "depth": 2, "branching": 16}, "depth"),
    ({"prompt": PROMPT, "depth": 1, "branching": 257}, "branching"),
    ({"prompt": PROMPT, "depth": "2", "branching": 2}, "depth"),
]


@pytest.mark.parametrize(("body", "field"), REFUSED, ids=[f"{f}={b.get(f)!r}" for b, f in REFUSED])
async def test_bad_input_is_a_422_naming_the_field(client: httpx.AsyncClient, body: dict[str, Any], field: str) -> None:
    response = await client.post("/inspect/tree", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == field


async def test_the_limits_are_refused_naming_the_setting(
    client: httpx.AsyncClient, small_limits_client: httpx.AsyncClient
) -> None:
    response = await client.post("/inspect/tree", json={"prompt": PROMPT, "depth": 2, "branching": 16})
    error = response.json()["error"]  # 16 + 256 nodes
    assert "272 nodes" in error["message"] and "GENAI_INSPECT_MAX_TREE_NODES" in error["message"]
    assert (
        await client.post("/inspect/tree", json={"prompt": PROMPT, "depth": 1, "branching": 256})
    ).status_code == 200
    response = await small_limits_client.post("/inspect/tree", json={"prompt": PROMPT, "depth": 5, "branching": 1})
    error = response.json()["error"]
    assert (
        response.status_code == 422 and error["param"] == "depth" and "GENAI_INSPECT_MAX_TREE_DEPTH" in error["message"]
    )
    response = await small_limits_client.post("/inspect/tree", json={"prompt": PROMPT, "depth": 2, "branching": 4})
    assert response.status_code == 200, response.text  # 4 + 16 = 20 nodes fit; 5 + 25 do not
    response = await small_limits_client.post("/inspect/tree", json={"prompt": PROMPT, "depth": 2, "branching": 5})
    assert response.status_code == 422 and response.json()["error"]["param"] == "depth"
