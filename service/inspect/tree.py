"""The tree of likeliest continuations: from the prompt, the `branching` likeliest next tokens, then
theirs, to `depth` tokens. Each level is one batched forward pass over every open path (in chunks of
bounded memory), reusing the prompt's keys and values, so a tree costs about `depth` decode steps
of its widest level, not one pass over the prompt per node.

Each node carries its conditional probability and the path's cumulative log-probability; a leaf's
total is the log-probability the model gives its path after the prompt (the sum of the path tokens'
logprobs when prompt + path is scored). Nodes past an end-of-sequence token are expanded like any
other: the tree shows the model's distribution, not what generation would stop at.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from service.inspect.continuations import chunked
from service.inspect.continuations import continuations as run_prompt
from service.inspect.forward import ModelInspector, inspector_for
from service.inspect.limits import TreeParams
from service.inspect.scheduling import Passes, run_to_end
from service.language import token_choice
from service.language.model import LanguageModel


@dataclass
class TreeNode:
    id: int
    token: str
    probability: float  # given the path above it
    logprob: float
    cumulative_logprob: float  # of the path from the root to here
    children: list[TreeNode] = field(default_factory=list)


@dataclass(frozen=True)
class TreeLeaf:
    ids: list[int]
    tokens: list[str]
    text: str
    logprob: float


@dataclass(frozen=True)
class ContinuationTree:
    ids: list[int]
    tokens: list[str]
    children: list[TreeNode]
    leaves: list[TreeLeaf]  # likeliest first
    nodes: int
    forward: str


@dataclass
class _Open:
    path: list[int]
    total: float
    children: list[TreeNode]  # where its children go


def tree_passes(
    inspector: ModelInspector,
    ids: list[int],
    params: TreeParams,
    token_text: token_choice.TokenText,
    detokenize: Callable[[list[int]], str],
) -> Passes[ContinuationTree]:
    """The tree in pieces (scheduling.py): the prompt's pass, then each chunk of each level's pass."""
    continuations = run_prompt(inspector, ids)
    roots: list[TreeNode] = []
    level = [_Open(path=[], total=0.0, children=roots)]
    logits = continuations.root[None]  # [open paths, vocab]
    for step in range(1, params.depth + 1):
        top = torch.topk(torch.log_softmax(logits, dim=-1), params.branching)  # [open paths, branching]
        following = []
        for parent, token_ids, logprobs in zip(level, top.indices.tolist(), top.values.tolist(), strict=True):
            for token_id, logprob in zip(token_ids, logprobs, strict=True):
                total = parent.total + logprob
                node = TreeNode(
                    id=token_id,
                    token=token_text(token_id),
                    probability=math.exp(logprob),
                    logprob=logprob,
                    cumulative_logprob=total,
                )
                parent.children.append(node)
                following.append(_Open(path=[*parent.path, token_id], total=total, children=node.children))
        level = following
        if step < params.depth:
            parts = []
            for chunk in chunked([open_path.path for open_path in level], len(ids)):
                yield  # the piece before ends here: each chunk's pass is a piece of its own
                parts.append(continuations.after(chunk))
            logits = torch.cat(parts)
    leaves = [
        TreeLeaf(
            ids=leaf.path, tokens=[token_text(i) for i in leaf.path], text=detokenize(leaf.path), logprob=leaf.total
        )
        for leaf in sorted(level, key=lambda leaf: -leaf.total)
    ]
    return ContinuationTree(
        ids=ids,
        tokens=[token_text(i) for i in ids],
        children=roots,
        leaves=leaves,
        nodes=params.nodes,
        forward=inspector.kind,
    )


def continuation_tree(
    inspector: ModelInspector,
    ids: list[int],
    params: TreeParams,
    token_text: token_choice.TokenText,
    detokenize: Callable[[list[int]], str],
) -> ContinuationTree:
    """The tree of `params`, every piece at once on the calling thread."""
    return run_to_end(tree_passes(inspector, ids, params, token_text, detokenize))


def inspect_tree(lm: LanguageModel, lean: bool, ids: list[int], params: TreeParams) -> Passes[ContinuationTree]:
    """`tree_passes` by the forward the engine serves `lm` with; each piece for the engine thread (the
    inspector is chosen in the first)."""
    return (yield from tree_passes(inspector_for(lm, lean), ids, params, lm.token_text, lm.detokenize))
