"""OpenAI's embeddings API: `POST /v1/embeddings` and `GET /v1/models`, so the `openai` SDK, LangChain's
`OpenAIEmbeddings` and the rest of its ecosystem work unchanged.

The model id picks the size: `NAME` (the default size), `NAME:small` (a named size) or `NAME:0.5` (a sparsity);
the SDK's `extra_body` may carry dynsparse's `sparsity`, `size`, `latency_budget_ms`, `depth` and `language`
instead. Errors on these routes are OpenAI's `{"error": {"message", "type", "param", "code"}}`.

Example:
    >>> client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-")
    >>> client.embeddings.create(model="sst2:small", input=["a gripping film"]).data[0].embedding[:2]
    [0.031, -0.112]
"""

import base64
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Body, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from service.deps import RuntimeDep, require_api_key
from service.errors import BadInput
from service.protocols.common import (
    TIMING_HEADERS,
    ModelNotFound,
    SizeFields,
    Unsupported,
    build_request,
    model_ids,
    selector_of_model,
    serve,
)
from service.schemas import EmbedRequest


class OpenAIError(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, rate_limit_error, server_error")
    param: str | None = Field(description="the request field at fault, when one is")
    code: str = Field(description="dynsparse's error_type: validation, unsupported, model_not_found, ...")


class OpenAIErrorResponse(BaseModel):
    """OpenAI's error shape (the SDK raises `openai.APIStatusError` with its message)."""

    error: OpenAIError


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": OpenAIErrorResponse, "description": "token-id input or `dimensions`: not supported"},
    401: {"model": OpenAIErrorResponse, "description": "API key missing or wrong (when the operator set one)"},
    404: {"model": OpenAIErrorResponse, "description": "a model id this server does not serve"},
    413: {"model": OpenAIErrorResponse, "description": "request body too large"},
    415: {"model": OpenAIErrorResponse, "description": "the body is not JSON (Content-Type)"},
    422: {"model": OpenAIErrorResponse, "description": "bad input, as on /v1/embed"},
    429: {"model": OpenAIErrorResponse, "description": "queue full; see the Retry-After header"},
    503: {"model": OpenAIErrorResponse, "description": "model not ready (loading or shutting down)"},
    504: {"model": OpenAIErrorResponse, "description": "the request outlived its deadline"},
}

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_api_key)], responses=_ERRORS)


class EmbeddingsRequest(SizeFields):
    """OpenAI's embeddings request, with dynsparse's size fields (the SDK's `extra_body`)."""

    model: str = Field(max_length=300, description="NAME, NAME:<size name> or NAME:<sparsity> (GET /v1/models)")
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="a text or a list of texts (token-id arrays are refused: send text)"
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: little-endian float32 bytes (the SDK's default, decoded by it)"
    )
    dimensions: int | None = Field(None, description="refused: width pruning does not shorten the output")
    user: str | None = Field(None, max_length=300, description="accepted and ignored")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="the unit vector; base64 of its float32 bytes if asked")


class Usage(BaseModel):
    prompt_tokens: int = Field(description="tokens the model read (the tokenizer's special tokens included)")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    """OpenAI's embeddings response: one embedding per input, in input order."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class Model(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"id": "sst2:small", "object": "model", "created": 0, "owned_by": "dynsparse"}]}
    )

    id: str
    object: Literal["model"] = "model"
    created: int = Field(default=0, description="0: a served checkpoint has no creation date")
    owned_by: str = "dynsparse"


class ModelList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "object": "list",
                    "data": [
                        {"id": "sst2", "object": "model", "created": 0, "owned_by": "dynsparse"},
                        {"id": "sst2:small", "object": "model", "created": 0, "owned_by": "dynsparse"},
                    ],
                }
            ]
        }
    )

    object: Literal["list"] = "list"
    data: list[Model]


_EXAMPLES: dict[str, Any] = {
    "named": {"summary": "a named size in the model id", "value": {"model": "sst2:small", "input": "a text"}},
    "sparsity": {"summary": "a sparsity in the model id", "value": {"model": "sst2:0.5", "input": ["a", "b"]}},
    "extra_body": {
        "summary": "dynsparse's own fields (the SDK's extra_body)",
        "value": {"model": "sst2", "input": ["a text"], "latency_budget_ms": 20, "encoding_format": "float"},
    },
}
_EMBED_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": TIMING_HEADERS,
        "content": {
            "application/json": {
                "example": {
                    "object": "list",
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.031, -0.112, 0.054]}],
                    "model": "sst2:small",
                    "usage": {"prompt_tokens": 5, "total_tokens": 5},
                }
            }
        },
    }
}


@router.post(
    "/embeddings", summary="OpenAI: embeddings at a chosen size", operation_id="openai_embeddings", responses=_EMBED_OK
)
async def embeddings(
    body: Annotated[EmbeddingsRequest, Body(openapi_examples=_EXAMPLES)],
    rt: RuntimeDep,
    request: Request,
    response: Response,
) -> EmbeddingsResponse:
    """The vectors of `POST /v1/embed` (mean-pooled, L2-normalised) at the size the model id or the body picks."""
    if body.dimensions is not None:
        raise Unsupported(
            "dimensions is not supported: a smaller size prunes the model's width, not the embedding's, "
            "so every size returns full-width vectors; pick a size with the model id (NAME:small) instead",
            "dimensions",
        )
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    if any(not isinstance(t, str) for t in texts):
        raise Unsupported("token-id input is not supported: send the text (a string or a list of strings)", "input")
    sized = build_request(EmbedRequest, texts, selector_of_model(rt, body.model), body.selectors())
    outcome = await serve(rt, request, response, "embed", sized)
    data = [Embedding(index=i, embedding=_encode(v, body.encoding_format)) for i, v in enumerate(outcome.outputs)]
    return EmbeddingsResponse(
        data=data, model=body.model, usage=Usage(prompt_tokens=outcome.tokens, total_tokens=outcome.tokens)
    )


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


@router.get("/models", summary="OpenAI: the served model and one id per named size", operation_id="openai_models")
async def models(rt: RuntimeDep) -> ModelList:
    """`NAME` serves the default size; `NAME:<size>` each named size (any `NAME:<sparsity>` works too)."""
    return ModelList(data=[Model(id=m) for m in model_ids(rt)])


@router.get("/models/{model}", summary="OpenAI: one model id", operation_id="openai_model")
async def model(model: str, rt: RuntimeDep) -> Model:
    """The model id if this server serves it (a named size or a sparsity in range), else 404."""
    try:
        chosen = selector_of_model(rt, model)
        rt.policy.select(chosen.get("sparsity"), chosen.get("size"), None)
    except BadInput as e:
        raise ModelNotFound(e.message) from None
    return Model(id=model)
