"""The KServe v2 (Open Inference Protocol) request and response bodies, as pydantic models (`service.protocols.kserve`
serves them)."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Tensor(BaseModel):
    """An input tensor: `data` in JSON, or (binary extension) `parameters.binary_data_size` bytes after the
    JSON header."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=64)
    shape: list[int] = Field(max_length=8)
    datatype: str = Field(max_length=16)
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=64)
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """An inference request (the JSON part, with the binary extension)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a gripping film"]}],
                    "parameters": {"size": "small"},
                }
            ]
        },
    )

    id: str | None = Field(None, max_length=200)
    inputs: list[Tensor] = Field(min_length=1, max_length=2)
    outputs: list[RequestedOutput] | None = Field(None, max_length=8)
    parameters: dict[str, Any] | None = Field(None, description="sparsity, size, latency_budget_ms, depth, language")


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class InferResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model_name": "sst2",
                    "model_version": "1",
                    "parameters": {"sparsity": 0.9, "size": "small"},
                    "outputs": [
                        {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["positive"]},
                        {"name": "score", "datatype": "FP32", "shape": [1], "data": [0.97]},
                    ],
                }
            ]
        }
    )

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] = Field(description="the served sparsity, size and times (as /v1/* bodies say)")
    outputs: list[OutputTensor]


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ServerMetadata(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "dynsparse", "version": "0.1.0", "extensions": ["binary_tensor_data"]}]
        }
    )

    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "sst2",
                    "versions": ["1"],
                    "platform": "dynsparse",
                    "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                    "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]}],
                    "parameters": {"task": "text-classification", "sizes": {"small": 0.9}},
                }
            ]
        }
    )

    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: dict[str, Any] = Field(description="the checkpoint's task and named sizes")


class Live(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"live": True}]})

    live: bool


class Ready(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"ready": True}]})

    ready: bool


class ModelReady(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "sst2", "ready": True}]})

    name: str
    ready: bool
