"""What the sampler's `explain` trace answers with, shared by /generate, /next-token-probs and /inspect: the
candidates at a step, the distribution after each of the sampler's stages, and the draw."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from service.language.sampling import StageName


class TokenCandidate(BaseModel):
    id: int = Field(examples=[7042])
    token: str = Field(examples=[" Paris"])
    probability: float = Field(ge=0, le=1, examples=[0.7725])
    logprob: float = Field(examples=[-0.2581])


def absent(value: object) -> bool:
    """For `exclude_if`: leave a field out of the answer when it has no value."""
    return value is None


class SamplerStage(BaseModel):
    """One step of the sampler and the distribution after it (service/language/sampler_explain.py)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "top_p",
                    "kept": 2,
                    "removed_mass": 0.1352,
                    "top": [
                        {"id": 7042, "token": " Paris", "probability": 0.9229, "logprob": -0.0802},
                        {"id": 260, "token": " the", "probability": 0.0771, "logprob": -2.5627},
                    ],
                }
            ]
        }
    )

    name: StageName = Field(
        description=(
            "The step, in the order the sampler applies them: `model` (softmax of the raw logits), then `grammar` "
            "(a constrained request's mask: only the tokens its `json_schema`, `regex` or `choice` allows next), "
            "`logit_bias`, `repetition_penalty`, `frequency_penalty`, `presence_penalty` (on the logits, so greedy "
            "sees them too), `temperature`, `min_p`, `top_k`, `top_p`; only those the request turns on."
        ),
        examples=["top_p"],
    )
    kept: int = Field(description="Tokens with nonzero probability after this step.", examples=[2])
    removed_mass: float = Field(
        ge=0,
        le=1,
        description=(
            "Probability mass this step took away: the total variation distance from the step before, "
            "sum over tokens of max(0, before - after). For a cut (`min_p`, `top_k`, `top_p`) it is exactly the "
            "mass of the tokens cut (the rest is renormalized); for a reshaping step (`logit_bias`, the penalties, "
            "`temperature`) the mass moved from the tokens that lost some to the others. 0 for `model`."
        ),
        examples=[0.1352],
    )
    top: list[TokenCandidate] = Field(
        description=(
            "Its likeliest tokens with nonzero probability (at most `top_alternatives`; on /next-token-probs "
            "`top_k`) and their probability after this step, likeliest first, ties by lower id: the order a draw walks."
        )
    )


class SamplerDraw(BaseModel):
    greedy: bool = Field(
        description="Greedy: the last stage's most likely token (ties: the lower id), no random number."
    )
    u: float | None = Field(
        default=None,
        exclude_if=absent,
        description=(
            "Sampled: the uniform number in [0, 1) drawn from the request's seeded generator. The token is the "
            "first of the last stage's tokens, likeliest first, whose running total of probability exceeds `u`."
        ),
        examples=[0.5231],
    )
    rank: int = Field(
        description="The token's place in the last stage, likeliest first (0 = the most likely).", examples=[0]
    )


class StepExplanation(BaseModel):
    """Why a step's token was chosen: the model's distribution, each sampler step, and the draw."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "entropy": 1.3812,
                    "surprisal": 0.2581,
                    "margin": 0.7080,
                    "stages": [
                        {
                            "name": "model",
                            "kept": 49152,
                            "removed_mass": 0.0,
                            "top": [{"id": 7042, "token": " Paris", "probability": 0.7725, "logprob": -0.2581}],
                        }
                    ],
                    "draw": {"greedy": True, "rank": 0},
                }
            ]
        }
    )

    entropy: float = Field(
        description="Entropy, in nats, of the model's full distribution (softmax of the raw logits, temperature 1).",
        examples=[1.3812],
    )
    surprisal: float = Field(
        description="-log p of the chosen token under the model's distribution, in nats.", examples=[0.2581]
    )
    margin: float = Field(
        description="The probability of the model's likeliest token minus that of the second.", examples=[0.708]
    )
    stages: list[SamplerStage] = Field(
        description="The distribution after each sampler step, in order; the last is the one the token was drawn from."
    )
    draw: SamplerDraw
