"""The checks of an inspection request against the loaded model's shape and the configured limits
(`GENAI_INSPECT_*`), before anything is queued: every failure names the request's field and the limit.

Indexes may count from the end (-1 is the last), as in Python; the parameters hold them counted from
the start. Lens layers run 0..L (0 = the embeddings, l = the output of the l-th decoder layer, as
transformers' `hidden_states`); attention layers 0..L-1 (as its `attentions`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.config import Settings
from service.inspect.exceptions import InspectionRefused
from service.language.model import LanguageModel
from service.language.validation import prompt_token_limit


@dataclass(frozen=True)
class ModelShape:
    layers: int  # decoder layers
    heads: int  # attention (query) heads in each
    vocab: int

    @classmethod
    def of(cls, lm: LanguageModel) -> ModelShape:
        config = lm.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        return cls(layers=int(text.num_hidden_layers), heads=int(text.num_attention_heads), vocab=lm.vocab_size)


@dataclass(frozen=True)
class LensParams:
    positions: tuple[int, ...]
    layers: tuple[int, ...]  # 0..L
    top_k: int


@dataclass(frozen=True)
class AttentionParams:
    layers: tuple[int, ...]  # 0..L-1
    heads: tuple[int, ...]
    query_positions: tuple[int, ...]
    mean_over_heads: bool


@dataclass(frozen=True)
class TreeParams:
    depth: int
    branching: int

    @property
    def nodes(self) -> int:
        """branching + branching² + … + branching^depth: every node below the root."""
        return sum(self.branching**level for level in range(1, self.depth + 1))


def indexes(values: Sequence[int] | None, count: int, field: str, what: str) -> tuple[int, ...]:
    """`values` counted from the start (all of 0..count-1 when None); out of range: refused, naming `field`."""
    if values is None:
        return tuple(range(count))
    if not values:
        raise InspectionRefused(field, f"{field} is empty: give at least one {what}, or leave it out for all")
    for place, value in enumerate(values):
        if not -count <= value < count:
            raise InspectionRefused(
                field,
                f"{field}[{place}] = {value} is out of range: {what}s run 0..{count - 1} (or -{count}..-1 from the end)",
            )
    return tuple(value % count for value in values)


@dataclass(frozen=True)
class InspectionLimits:
    """The bounds one prompt's inspection must keep: the model's shape, the prompt's length, the settings."""

    shape: ModelShape
    prompt_tokens: int
    context_length: int
    max_prompt_tokens: int
    max_top_k: int
    max_lens_entries: int
    max_attention_weights: int
    max_tree_nodes: int
    max_tree_depth: int

    @classmethod
    def of(cls, lm: LanguageModel, settings: Settings, prompt_tokens: int) -> InspectionLimits:
        return cls(
            shape=ModelShape.of(lm),
            prompt_tokens=prompt_tokens,
            context_length=lm.context_length,
            max_prompt_tokens=min(settings.inspect_max_prompt_tokens, prompt_token_limit(lm, settings)),
            max_top_k=min(settings.max_top_k, lm.vocab_size),
            max_lens_entries=settings.inspect_max_lens_entries,
            max_attention_weights=settings.inspect_max_attention_weights,
            max_tree_nodes=settings.inspect_max_tree_nodes,
            max_tree_depth=settings.inspect_max_tree_depth,
        )

    def check_prompt(self, field: str = "prompt") -> None:
        if self.prompt_tokens > self.max_prompt_tokens:
            raise InspectionRefused(
                field,
                f"{field} has {self.prompt_tokens} tokens; inspection takes at most {self.max_prompt_tokens} "
                "(GENAI_INSPECT_MAX_PROMPT_TOKENS, within GENAI_MAX_PROMPT_TOKENS and the model's context)",
            )

    def lens(
        self, *, top_k: int, positions: Sequence[int], layers: Sequence[int] | None, include_embeddings: bool
    ) -> LensParams:
        self.check_prompt()
        if top_k > self.max_top_k:
            raise InspectionRefused("top_k", f"top_k = {top_k} exceeds the limit of {self.max_top_k} (GENAI_MAX_TOP_K)")
        at = indexes(positions, self.prompt_tokens, "positions", "position")
        if layers is None:
            chosen = tuple(range(0 if include_embeddings else 1, self.shape.layers + 1))
        else:
            chosen = indexes(layers, self.shape.layers + 1, "layers", "lens layer")
            if not include_embeddings and 0 in chosen:
                raise InspectionRefused("layers", "layers includes 0 (the embeddings) but include_embeddings is false")
        entries = len(at) * len(chosen) * top_k
        if entries > self.max_lens_entries:
            raise InspectionRefused(
                "positions",
                f"positions × layers × top_k = {len(at)} × {len(chosen)} × {top_k} = {entries} exceeds the limit of "
                f"{self.max_lens_entries} (GENAI_INSPECT_MAX_LENS_ENTRIES): ask for fewer positions or layers, or a smaller top_k",
            )
        return LensParams(positions=at, layers=chosen, top_k=top_k)

    def attention(
        self,
        *,
        layers: Sequence[int] | None,
        heads: Sequence[int] | None,
        query_positions: Sequence[int] | None,
        mean_over_heads: bool,
    ) -> AttentionParams:
        self.check_prompt()
        params = AttentionParams(
            layers=indexes(layers, self.shape.layers, "layers", "layer"),
            heads=indexes(heads, self.shape.heads, "heads", "head"),
            query_positions=indexes(query_positions, self.prompt_tokens, "query_positions", "position"),
            mean_over_heads=mean_over_heads,
        )
        maps = len(params.layers) * (1 if mean_over_heads else len(params.heads))
        weights = maps * sum(position + 1 for position in params.query_positions)
        if weights > self.max_attention_weights:
            raise InspectionRefused(
                "query_positions",
                f"the answer would hold {weights} weights ({len(params.layers)} layers × {1 if mean_over_heads else len(params.heads)} "
                f"heads × the keys the query positions see), over the limit of {self.max_attention_weights} "
                "(GENAI_INSPECT_MAX_ATTENTION_WEIGHTS): ask for fewer query_positions, layers or heads, or mean_over_heads",
            )
        return params

    def tree(self, *, depth: int, branching: int) -> TreeParams:
        self.check_prompt()
        if depth > self.max_tree_depth:
            raise InspectionRefused(
                "depth", f"depth = {depth} exceeds the limit of {self.max_tree_depth} (GENAI_INSPECT_MAX_TREE_DEPTH)"
            )
        if self.prompt_tokens + depth > self.context_length:
            raise InspectionRefused(
                "depth",
                f"prompt tokens ({self.prompt_tokens}) + depth ({depth}) exceed the model's context of {self.context_length}",
            )
        if branching > min(self.shape.vocab, self.max_tree_nodes):
            field_limit = "the vocabulary" if self.shape.vocab < self.max_tree_nodes else "GENAI_INSPECT_MAX_TREE_NODES"
            raise InspectionRefused(
                "branching",
                f"branching = {branching} exceeds the limit of {min(self.shape.vocab, self.max_tree_nodes)} ({field_limit})",
            )
        params = TreeParams(depth=depth, branching=branching)
        if params.nodes > self.max_tree_nodes:
            raise InspectionRefused(
                "depth",
                f"depth {depth} at branching {branching} makes {params.nodes} nodes, over the limit of {self.max_tree_nodes} "
                "(GENAI_INSPECT_MAX_TREE_NODES): a smaller depth or branching",
            )
        return params
