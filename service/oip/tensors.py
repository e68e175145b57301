"""Decoding and encoding Open Inference Protocol tensors for the digit classifier (no HTTP here).

Inputs: one tensor of `[N, 784]` or `[N, 28, 28]` pixels, `FP32`/`FP64` in 0..1 (ink = 1; or 0..255
with `parameters.value_range = "0-255"`) or `UINT8` in 0..255, as JSON `data` or as raw little-endian
bytes (binary tensor extension). Outputs: `probabilities` FP32 `[N, 10]` and `digits` INT64 `[N]`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from service.errors import InvalidInput
from service.oip.schemas import InferenceRequest, RequestInput, ResponseOutput

MODEL_NAME = "mnist"
MODEL_VERSION = "1"
INPUT_NAME = "input"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_DIGITS = "digits"
OUTPUT_NAMES = (OUTPUT_PROBABILITIES, OUTPUT_DIGITS)
_DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "UINT8": np.dtype("u1")}
_OUTPUT_DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8")}


def parse_request(raw: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes]:
    """Split a body into its JSON header and its binary tail (binary extension), and validate the JSON."""
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise InvalidInput(
                "Inference-Header-Content-Length must be an integer", param="Inference-Header-Content-Length"
            ) from None
        if not 0 < size <= len(raw):
            raise InvalidInput(
                f"Inference-Header-Content-Length = {size} does not fit a body of {len(raw)} bytes",
                param="Inference-Header-Content-Length",
            )
        head, tail = raw[:size], raw[size:]
    else:
        head, tail = raw, b""
    try:
        payload = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"malformed JSON: {exc}", param="body") from None
    except RecursionError:
        raise InvalidInput("malformed JSON: nested too deeply", param="body") from None
    try:
        return InferenceRequest.model_validate(payload), tail
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise InvalidInput(f"{field}: {first.get('msg')}", param=field) from None


@dataclass
class DecodedInput:
    images: np.ndarray  # (N, 784) float32 in 0..1


def decode_input(request: InferenceRequest, binary: bytes, max_batch: int) -> DecodedInput:
    if len(request.inputs) != 1:
        raise InvalidInput(
            f"this model takes exactly one input tensor (`{INPUT_NAME}`); got {len(request.inputs)}", param="inputs"
        )
    tensor = request.inputs[0]
    dtype = _DTYPES.get(tensor.datatype.upper())
    if dtype is None:
        raise InvalidInput(
            f"datatype {tensor.datatype!r} is not supported; use FP32, FP64 or UINT8", param="inputs[0].datatype"
        )
    shape = tensor.shape
    if len(shape) not in (2, 3) or shape[1:] not in ([784], [28, 28]) or shape[0] < 1:
        raise InvalidInput(f"shape must be [N, 784] or [N, 28, 28] with N >= 1; got {shape}", param="inputs[0].shape")
    n = shape[0]
    if n > max_batch:
        raise InvalidInput(
            f"batch of {n} images exceeds the limit of {max_batch} (GENAI_DIGITS_MAX_BATCH)", param="inputs[0].shape"
        )
    count = math.prod(shape)
    values = _values(tensor, dtype, count, binary)
    if values.size != count:
        raise InvalidInput(f"shape {shape} needs {count} values; got {values.size}", param="inputs[0].data")
    values = values.astype(np.float64).reshape(n, 784)
    if not np.all(np.isfinite(values)):
        raise InvalidInput("input contains a non-finite number (NaN or infinity)", param="inputs[0].data")
    value_range = str((tensor.parameters or {}).get("value_range", "0-255" if dtype == np.uint8 else "0-1"))
    if value_range not in ("0-1", "0-255"):
        raise InvalidInput('parameters.value_range must be "0-1" or "0-255"', param="inputs[0].parameters.value_range")
    top = 255.0 if value_range == "0-255" else 1.0
    if values.min() < 0 or values.max() > top:
        raise InvalidInput(
            f"values must lie in {value_range} for datatype {tensor.datatype} (ink = high); got {values.min():g}..{values.max():g}"
            + (
                '; send parameters.value_range = "0-255" for 0..255 floats'
                if top == 1.0 and values.max() <= 255
                else ""
            ),
            param="inputs[0].data",
        )
    return DecodedInput(images=(values / top).astype(np.float32))


def _values(tensor: RequestInput, dtype: np.dtype, count: int, binary: bytes) -> np.ndarray:
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0:
            raise InvalidInput(
                "parameters.binary_data_size must be a non-negative integer",
                param="inputs[0].parameters.binary_data_size",
            )
        if size != count * dtype.itemsize:
            raise InvalidInput(
                f"binary_data_size = {size} bytes, but shape {tensor.shape} of {tensor.datatype} needs {count * dtype.itemsize}",
                param="inputs[0].parameters.binary_data_size",
            )
        if len(binary) < size:
            raise InvalidInput(
                f"the body carries {len(binary)} bytes of binary tensor data; {size} announced",
                param="inputs[0].parameters.binary_data_size",
            )
        return np.frombuffer(binary[:size], dtype=dtype)
    if tensor.data is None:
        raise InvalidInput("the input has neither `data` nor parameters.binary_data_size", param="inputs[0].data")
    try:
        return np.asarray(tensor.data, dtype=np.float64).reshape(-1)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise InvalidInput(
            "data must be numbers (flat, or nested with equal lengths)", param="inputs[0].data"
        ) from None


@dataclass
class EncodedOutputs:
    outputs: list[ResponseOutput]
    binary: list[bytes]


def encode_outputs(request: InferenceRequest, probabilities: np.ndarray, digits: np.ndarray) -> EncodedOutputs:
    n = int(probabilities.shape[0])
    tensors: dict[str, tuple[str, list[int], np.ndarray]] = {
        OUTPUT_PROBABILITIES: ("FP32", [n, 10], probabilities.astype(np.float32)),
        OUTPUT_DIGITS: ("INT64", [n], digits.astype(np.int64)),
    }
    binary_default = bool((request.parameters or {}).get("binary_data_output", False))
    wanted: list[tuple[str, bool]]
    if request.outputs:
        wanted = []
        for position, output in enumerate(request.outputs):
            if output.name not in tensors:
                raise InvalidInput(
                    f"unknown output {output.name!r}; this model has {list(OUTPUT_NAMES)}",
                    param=f"outputs[{position}].name",
                )
            wanted.append((output.name, bool((output.parameters or {}).get("binary_data", binary_default))))
    else:
        wanted = [(name, binary_default) for name in OUTPUT_NAMES]
    outputs: list[ResponseOutput] = []
    blobs: list[bytes] = []
    for name, as_binary in wanted:
        datatype, shape, array = tensors[name]
        if as_binary:
            blob = np.ascontiguousarray(array, dtype=_OUTPUT_DTYPES[datatype]).tobytes()
            blobs.append(blob)
            outputs.append(
                ResponseOutput(name=name, shape=shape, datatype=datatype, parameters={"binary_data_size": len(blob)})
            )
        else:
            data: list[Any] = array.reshape(-1).tolist()
            outputs.append(ResponseOutput(name=name, shape=shape, datatype=datatype, data=data))
    return EncodedOutputs(outputs=outputs, binary=blobs)
