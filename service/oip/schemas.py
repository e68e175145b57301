"""Open Inference Protocol (KServe v2) bodies: server and model metadata, inference requests and responses.

JSON tensors follow the protocol (`data` row-major, flat or nested, restored by `shape`); the binary
tensor extension (Triton's: `binary_data_size` and an `Inference-Header-Content-Length` header) is
parsed in the router, since such bodies are not JSON.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.schemas import RequestModel


class ServerMetadata(BaseModel):
    name: str = Field(examples=["genai-service"])
    version: str = Field(examples=["0.1.0"])
    extensions: list[str] = Field(examples=[["binary_tensor_data"]])


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None


class ModelMetadata(BaseModel):
    name: str = Field(examples=["mnist"])
    versions: list[str] = Field(examples=[["1"]])
    platform: str = Field(examples=["numpy-mlp"])
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] | None = None


class RequestInput(RequestModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(description="The input's name (this model has one input, `input`).")
    shape: list[int] = Field(description="`[N, 784]` or `[N, 28, 28]`.")
    datatype: str = Field(
        description='`FP32` (0..1, or 0..255 with parameters.value_range = "0-255"), `FP64`, or `UINT8` (0..255).'
    )
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data_size` (binary extension); `value_range`."
    )
    data: Any = Field(default=None, description="Row-major values, flat or nested. Absent with the binary extension.")


class RequestOutput(RequestModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data: true` returns the tensor as raw bytes after the JSON."
    )


class InferenceRequest(RequestModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": [0] * 784}],
                    "outputs": [{"name": "digits"}, {"name": "probabilities"}],
                }
            ]
        },
    )

    id: str | None = Field(default=None, description="Echoed in the response.")
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data_output: true` returns every output as raw bytes."
    )
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(default=None, description="Which outputs to return (default: all).")


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class RepositoryIndexEntry(BaseModel):
    """One model of the repository, as Triton's repository extension lists it."""

    name: str = Field(examples=["mnist"])
    version: str = Field(examples=["1"])
    state: str = Field(description="`READY`, or `UNAVAILABLE` while loading or shutting down.", examples=["READY"])
    reason: str | None = Field(default=None, description="Why it is not ready (absent when it is).")


class DurationStatistic(BaseModel):
    count: int = Field(description="How many times this phase ran.")
    ns: int = Field(description="Nanoseconds spent in it, in all.")


class InferencePhases(BaseModel):
    success: DurationStatistic = Field(description="Successful requests, whole (body read to response built).")
    fail: DurationStatistic = Field(description="Refused or failed requests.")
    queue: DurationStatistic = Field(description="Waiting before the model (0: there is no queue).")
    compute_input: DurationStatistic = Field(description="Reading and decoding the input tensors.")
    compute_infer: DurationStatistic = Field(description="The forward pass.")
    compute_output: DurationStatistic = Field(description="Encoding the output tensors.")
    cache_hit: DurationStatistic = Field(description="0: there is no response cache.")
    cache_miss: DurationStatistic = Field(description="0: there is no response cache.")


class BatchStatistics(BaseModel):
    batch_size: int
    compute_input: DurationStatistic
    compute_infer: DurationStatistic
    compute_output: DurationStatistic


class ModelStatisticsOut(BaseModel):
    name: str = Field(examples=["mnist"])
    version: str = Field(examples=["1"])
    last_inference: int = Field(description="Milliseconds since the epoch of the last inference (0: none yet).")
    inference_count: int = Field(description="Inferences: images classified (a batch of N counts N).")
    execution_count: int = Field(description="Model runs: one per request.")
    inference_stats: InferencePhases
    response_stats: dict[str, Any] = Field(description="Empty: no decoupled (many-response) models.")
    batch_stats: list[BatchStatistics] = Field(description="The compute phases per batch size.")
    memory_usage: list[Any] = Field(description="Empty: not tracked.")


class InferenceStatistics(BaseModel):
    """Triton's statistics extension: `{"model_stats": [...]}`, counted over inferences through `/v2`."""

    model_stats: list[ModelStatisticsOut]


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its `$defs` inlined, for an `openapi_extra` request body."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve_object(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return resolve_object(defs[ref.removeprefix("#/$defs/")])
        return {k: resolve(v) for k, v in node.items()}

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            return resolve_object(node)
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve_object(schema)
