"""Request and response bodies of /inspect/logit-lens, /inspect/attention and /inspect/tree.

Static bounds here; each request turns itself into inspection parameters checked against the loaded
model's shape and the limits (`GENAI_INSPECT_*`) by `limits.InspectionLimits`, and each response is
built from the model side's result (`of`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from service.inspect.attention import AttentionWeights
from service.inspect.limits import AttentionParams, InspectionLimits, LensParams, TreeParams
from service.inspect.logit_lens import LogitLens
from service.inspect.tree import ContinuationTree
from service.inspect.tree import TreeNode as ModelTreeNode
from service.language.events import Candidate
from service.language.explain_schemas import TokenCandidate
from service.schemas import ParseSpecial, RequestModel

_PROMPT = "The text to inspect (at most GENAI_INSPECT_MAX_PROMPT_TOKENS tokens)."
_ADD_SPECIAL = "Tokenize the prompt with the tokenizer's special tokens."
_FORWARD = "The forward pass used: `lean-llama` (the built-in decoder) or `transformers`, as /info's engine `forward`."


def _candidate(c: Candidate) -> TokenCandidate:
    return TokenCandidate(id=c.id, token=c.token, probability=c.probability, logprob=c.logprob)


class PromptToken(BaseModel):
    position: int
    id: int
    token: str

    @classmethod
    def all(cls, ids: list[int], tokens: list[str]) -> list[PromptToken]:
        return [cls(position=p, id=i, token=t) for p, (i, t) in enumerate(zip(ids, tokens, strict=True))]


class InspectRequest(RequestModel):
    """What every inspection request takes: the prompt, tokenized as `/next-token-probs` tokenizes it."""

    prompt: str = Field(min_length=1, description=_PROMPT)
    add_special_tokens: bool = Field(default=False, description=_ADD_SPECIAL)
    parse_special: ParseSpecial = True


# ---- /inspect/logit-lens -------------------------------------------------------------------------


class LogitLensRequest(InspectRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"prompt": "The capital of France is", "top_k": 3},
                {"prompt": "The capital of France is", "top_k": 3, "positions": [-2, -1], "layers": [0, 10, 20, -1]},
            ]
        }
    )

    top_k: int = Field(default=5, ge=1, description="Tokens listed per cell (at most GENAI_MAX_TOP_K).")
    positions: list[int] = Field(
        default_factory=lambda: [-1],
        min_length=1,
        description="Prompt positions whose next-token distribution to read (negative: from the end; default the last).",
    )
    layers: list[int] | None = Field(
        default=None,
        description="Lens layers, 0..L: 0 = the embeddings, l = after the l-th decoder layer, L = the model's output "
        "(negative: from the end). Default: all.",
    )
    include_embeddings: bool = Field(
        default=True, description="With `layers` left out: include layer 0, the embeddings."
    )

    def to_lens_params(self, limits: InspectionLimits) -> LensParams:
        return limits.lens(
            top_k=self.top_k, positions=self.positions, layers=self.layers, include_embeddings=self.include_embeddings
        )


class LensLayerCell(BaseModel):
    layer: int = Field(description="0 = the embeddings, l = after the l-th decoder layer.")
    top: list[TokenCandidate] = Field(description="The likeliest next tokens read at this layer, likeliest first.")
    entropy: float = Field(ge=0, description="Of this layer's whole distribution, in nats.")
    final_token_rank: int = Field(
        ge=1, description="Rank here of the model's own top token (`final_token`); 1 = first."
    )


class LensPositionRow(BaseModel):
    position: int
    token: str = Field(description="The prompt token at this position; the distributions are over the token after it.")
    final_token: TokenCandidate = Field(description="The model's own likeliest next token here (its last layer's top).")
    layers: list[LensLayerCell]


class LogitLensResponse(BaseModel):
    prompt_tokens: list[PromptToken]
    layers: int = Field(description="The model's decoder layers, L: lens layers run 0..L.")
    positions: list[LensPositionRow]
    forward: str = Field(description=_FORWARD)
    model: str

    @classmethod
    def of(cls, lens: LogitLens, model: str) -> LogitLensResponse:
        return cls(
            prompt_tokens=PromptToken.all(lens.ids, lens.tokens),
            layers=lens.layers,
            positions=[
                LensPositionRow(
                    position=p.position,
                    token=p.token,
                    final_token=_candidate(p.final_token),
                    layers=[
                        LensLayerCell(
                            layer=c.layer,
                            top=[_candidate(t) for t in c.top],
                            entropy=c.entropy,
                            final_token_rank=c.final_token_rank,
                        )
                        for c in p.layers
                    ],
                )
                for p in lens.positions
            ],
            forward=lens.forward,
            model=model,
        )


# ---- /inspect/attention --------------------------------------------------------------------------


class AttentionRequest(InspectRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"prompt": "The capital of France is", "layers": [0], "heads": [0]},
                {
                    "prompt": "The capital of France is",
                    "layers": [-1],
                    "query_positions": [-1],
                    "mean_over_heads": True,
                },
            ]
        }
    )

    layers: list[int] | None = Field(
        default=None, description="Decoder layers, 0..L-1 (negative: from the end). Default: all."
    )
    heads: list[int] | None = Field(
        default=None, description="Attention heads of each layer (negative: from the end). Default: all."
    )
    query_positions: list[int] | None = Field(
        default=None, description="Positions whose attention to report (negative: from the end). Default: all."
    )
    mean_over_heads: bool = Field(
        default=False, description="One map per layer: the mean over `heads`, instead of one per head."
    )

    def to_attention_params(self, limits: InspectionLimits) -> AttentionParams:
        return limits.attention(
            layers=self.layers,
            heads=self.heads,
            query_positions=self.query_positions,
            mean_over_heads=self.mean_over_heads,
        )


class AttentionMapBody(BaseModel):
    layer: int
    head: int | None = Field(description="null: the mean over `heads`.")
    weights: list[list[float]] = Field(
        description="One row per `query_positions` entry q: its weights over prompt positions 0..q (they sum to 1)."
    )


class AttentionResponse(BaseModel):
    prompt_tokens: list[PromptToken]
    query_positions: list[int]
    heads: list[int] = Field(description="The heads shown, or averaged when `mean_over_heads`.")
    mean_over_heads: bool
    maps: list[AttentionMapBody] = Field(description="Layer by layer, head by head, in the order asked.")
    forward: str = Field(description=_FORWARD)
    model: str

    @classmethod
    def of(cls, result: AttentionWeights, model: str) -> AttentionResponse:
        return cls(
            prompt_tokens=PromptToken.all(result.ids, result.tokens),
            query_positions=result.query_positions,
            heads=result.heads,
            mean_over_heads=result.mean_over_heads,
            maps=[AttentionMapBody(layer=m.layer, head=m.head, weights=m.weights) for m in result.maps],
            forward=result.forward,
            model=model,
        )


# ---- /inspect/tree -------------------------------------------------------------------------------


class TreeRequest(InspectRequest):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"prompt": "The capital of France is", "depth": 2, "branching": 2}]}
    )

    depth: int = Field(ge=1, description="Tokens each path runs (at most GENAI_INSPECT_MAX_TREE_DEPTH).")
    branching: int = Field(ge=1, description="Likeliest tokens expanded at each node.")

    def to_tree_params(self, limits: InspectionLimits) -> TreeParams:
        """branching + branching² + … + branching^depth nodes must stay within GENAI_INSPECT_MAX_TREE_NODES."""
        return limits.tree(depth=self.depth, branching=self.branching)


class TreeNode(BaseModel):
    id: int
    token: str
    probability: float = Field(ge=0, le=1, description="Given the path above it.")
    logprob: float
    cumulative_logprob: float = Field(description="Of the whole path from the prompt to this token.")
    children: list[TreeNode] = Field(description="Likeliest first; empty at the leaves.")

    @classmethod
    def of(cls, node: ModelTreeNode) -> TreeNode:
        return cls(
            id=node.id,
            token=node.token,
            probability=node.probability,
            logprob=node.logprob,
            cumulative_logprob=node.cumulative_logprob,
            children=[cls.of(child) for child in node.children],
        )


class TreeLeafBody(BaseModel):
    ids: list[int]
    tokens: list[str]
    text: str = Field(description="The path's tokens decoded together.")
    logprob: float = Field(description="The path's total log-probability after the prompt.")


class TreeResponse(BaseModel):
    prompt_tokens: list[PromptToken]
    children: list[TreeNode] = Field(description="The root's children: the likeliest next tokens after the prompt.")
    leaves: list[TreeLeafBody] = Field(description="Every path of `depth` tokens, likeliest first.")
    nodes: int = Field(description="Nodes below the root.")
    forward: str = Field(description=_FORWARD)
    model: str

    @classmethod
    def of(cls, tree: ContinuationTree, model: str) -> TreeResponse:
        return cls(
            prompt_tokens=PromptToken.all(tree.ids, tree.tokens),
            children=[TreeNode.of(node) for node in tree.children],
            leaves=[
                TreeLeafBody(ids=leaf.ids, tokens=leaf.tokens, text=leaf.text, logprob=leaf.logprob)
                for leaf in tree.leaves
            ],
            nodes=tree.nodes,
            forward=tree.forward,
            model=model,
        )
