"""The /v1 API: classify, embed, and the table of sizes. All need the API key when one is set."""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, Response

from service.deps import RuntimeDep, require_api_key
from service.dispatch import Outcome, dispatch
from service.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    Prediction,
    SizesResponse,
)

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "API key missing or wrong (when the operator set one)"},
    413: {"model": ErrorResponse, "description": "request body too large"},
    422: {
        "model": ErrorResponse,
        "description": "bad input: empty or over-long text, bad size selector, wrong types",
    },
    429: {"model": ErrorResponse, "description": "queue full; see the Retry-After header"},
    503: {"model": ErrorResponse, "description": "model not ready (loading or shutting down)"},
    504: {"model": ErrorResponse, "description": "the request outlived its deadline"},
}

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=ERRORS)

_CLASSIFY_EXAMPLES: dict[str, Any] = {
    "sparsity": {
        "summary": "at a sparsity",
        "value": {"inputs": ["a gripping film", "dull"], "sparsity": 0.5},
    },
    "size": {"summary": "a named size", "value": {"inputs": ["a gripping film"], "size": "small"}},
    "budget": {
        "summary": "a latency budget",
        "value": {"inputs": ["a gripping film"], "latency_budget_ms": 20},
    },
    "pair": {"summary": "a text pair", "value": {"inputs": [["A man sleeps.", "A person rests."]]}},
    "default": {"summary": "the operator's default size", "value": {"inputs": ["a gripping film"]}},
}
_EMBED_EXAMPLES: dict[str, Any] = {
    "size": {"summary": "a named size", "value": {"inputs": ["a sentence to embed"], "size": "small"}},
    "sparsity": {"summary": "at a sparsity", "value": {"inputs": ["one", "two"], "sparsity": 0.3}},
}


def _timing_headers(response: Response, outcome: Outcome) -> None:
    """Timing headers as text-embeddings-inference sends them, for proxies and load tests."""
    served = outcome.served
    response.headers["x-sparsity"] = str(served["sparsity"])
    response.headers["x-total-time"] = str(served["latency_ms"])
    response.headers["x-queue-time"] = str(served["queue_ms"])
    response.headers["x-inference-time"] = str(served["inference_ms"])


@router.post("/classify", summary="Classify texts (or text pairs) at a chosen size")
async def classify(
    body: Annotated[ClassifyRequest, Body(openapi_examples=_CLASSIFY_EXAMPLES)],
    rt: RuntimeDep,
    request: Request,
    response: Response,
) -> ClassifyResponse:
    """Label and probability per input. Choose the size with at most one of `sparsity`, `size` or
    `latency_budget_ms`; the response says which sparsity served it and how long it took."""
    outcome = await dispatch(rt, request, "classify", body)
    _timing_headers(response, outcome)
    labels = rt.engine.labels
    results = [Prediction(label=labels[i], score=p) for i, p in outcome.outputs]
    return ClassifyResponse(results=results, **outcome.served)


@router.post("/embed", summary="Sentence embeddings at a chosen size")
async def embed(
    body: Annotated[EmbedRequest, Body(openapi_examples=_EMBED_EXAMPLES)],
    rt: RuntimeDep,
    request: Request,
    response: Response,
) -> EmbedResponse:
    """Mean-pooled, L2-normalised last hidden states of the encoder at the chosen size."""
    outcome = await dispatch(rt, request, "embed", body)
    _timing_headers(response, outcome)
    dims = len(outcome.outputs[0]) if outcome.outputs else 0
    return EmbedResponse(embeddings=outcome.outputs, dimensions=dims, **outcome.served)


@router.get("/sizes", summary="The sizes this server serves")
async def sizes(rt: RuntimeDep) -> SizesResponse:
    """Per level: sparsity, parameters, FLOPs, the checkpoint's metrics, latency measured on this server."""
    return rt.sizes
