"""The /v1 API: one endpoint per task (classify, tokens, answer; embed from any checkpoint) and the table of
sizes. All need the API key when one is set; a task the checkpoint was not trained for is a 404."""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, Response

from service.codec import AnswerSpan, EntitySpan
from service.deps import RuntimeDep, require_api_key, serving
from service.dispatch import Outcome, dispatch
from service.protocols.common import timing_headers
from service.quality import live_sizes
from service.schemas import (
    Answer,
    AnswerRequest,
    AnswerResponse,
    ClassifyRequest,
    ClassifyResponse,
    EmbedRequest,
    EmbedResponse,
    Entity,
    ErrorResponse,
    Prediction,
    SizesResponse,
    TokensRequest,
    TokensResponse,
)

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "API key missing or wrong (when the operator set one)"},
    413: {"model": ErrorResponse, "description": "request body too large"},
    415: {"model": ErrorResponse, "description": "the body is not JSON (Content-Type)"},
    422: {
        "model": ErrorResponse,
        "description": "bad input: empty or over-long text, bad size selector, a depth over the model's layers "
        "or with a latency budget, a language the checkpoint has no ordering for, wrong types",
    },
    429: {"model": ErrorResponse, "description": "queue full; see the Retry-After header"},
    503: {"model": ErrorResponse, "description": "model not ready (loading or shutting down)"},
    504: {"model": ErrorResponse, "description": "the request outlived its deadline"},
}

# the task endpoints other than embed: the checkpoint may have been trained for another task
OTHER_TASK: dict[int | str, dict[str, Any]] = {
    404: {
        "model": ErrorResponse,
        "description": "the checkpoint was trained for another task; the message names its endpoint",
    },
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
    "depth": {
        "summary": "fewer layers (with a width)",
        "value": {"inputs": ["a gripping film"], "size": "small", "depth": 6},
    },
    "language": {
        "summary": "the inputs' language (its own ordering, if the checkpoint has one)",
        "value": {"inputs": ["ein packender Film"], "sparsity": 0.5, "language": "de"},
    },
}
_EMBED_EXAMPLES: dict[str, Any] = {
    "size": {"summary": "a named size", "value": {"inputs": ["a sentence to embed"], "size": "small"}},
    "sparsity": {"summary": "at a sparsity", "value": {"inputs": ["one", "two"], "sparsity": 0.3}},
}
_TOKENS_EXAMPLES: dict[str, Any] = {
    "text": {"summary": "a text", "value": {"inputs": ["Ada Lovelace was born in London."], "sparsity": 0.5}},
    "words": {
        "summary": "a word list",
        "value": {"inputs": [["Ada", "Lovelace", "was", "born", "in", "London", "."]], "size": "small"},
    },
}
_ANSWER_EXAMPLES: dict[str, Any] = {
    "question": {
        "summary": "a question about a context",
        "value": {
            "inputs": [{"question": "Where was Ada born?", "context": "Ada Lovelace was born in London in 1815."}],
            "sparsity": 0.5,
        },
    },
}


def _timing_headers(response: Response, outcome: Outcome) -> None:
    """Timing headers as text-embeddings-inference sends them, for proxies and load tests."""
    timing_headers(response, outcome)


@router.post(
    "/classify",
    summary="Classify texts (or text pairs) at a chosen size",
    dependencies=[Depends(serving("classify"))],
    responses=OTHER_TASK,
)
async def classify(
    body: Annotated[ClassifyRequest, Body(openapi_examples=_CLASSIFY_EXAMPLES)],
    rt: RuntimeDep,
    request: Request,
    response: Response,
) -> ClassifyResponse:
    """Label and probability per input. Choose the size with at most one of `sparsity`, `size` or
    `latency_budget_ms`, and optionally fewer layers with `depth`; name the inputs' `language` to use its own
    ordering (checkpoints with per-language orderings). The response says which sparsity, depth and language
    ordering served it and how long it took."""
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
    """Mean-pooled, L2-normalised last hidden states of the encoder at the chosen size; from a checkpoint of
    any task (for a feature-extraction checkpoint, this is its endpoint)."""
    outcome = await dispatch(rt, request, "embed", body)
    _timing_headers(response, outcome)
    dims = len(outcome.outputs[0]) if outcome.outputs else 0
    return EmbedResponse(embeddings=outcome.outputs, dimensions=dims, **outcome.served)


@router.post(
    "/tokens",
    summary="Tag the words of texts (entities, or one tag per word) at a chosen size",
    dependencies=[Depends(serving("tokens"))],
    responses=OTHER_TASK,
)
async def tokens(
    body: Annotated[TokensRequest, Body(openapi_examples=_TOKENS_EXAMPLES)],
    rt: RuntimeDep,
    request: Request,
    response: Response,
) -> TokensResponse:
    """Per input, its entities: runs of B-/I- tagged words, grouped as transformers' token-classification
    pipeline groups them (`aggregation_strategy="simple"`), "O" left out; for tag sets without B-/I- (e.g.
    POS), every word with its tag. A word's tag is its first sub-word's, as in training. A text is split into
    words where the tokenizer splits it; offsets are characters in the text (a word list: in the words joined
    by single spaces)."""
    outcome = await dispatch(rt, request, "tokens", body)
    _timing_headers(response, outcome)
    results = [[_entity(e) for e in found] for found in outcome.outputs]
    return TokensResponse(results=results, **outcome.served)


def _entity(e: EntitySpan) -> Entity:
    return Entity(entity_group=e.label, score=e.score, word=e.word, start=e.start, end=e.end)


@router.post(
    "/answer",
    summary="Answer questions from their contexts at a chosen size",
    dependencies=[Depends(serving("answer"))],
    responses=OTHER_TASK,
)
async def answer(
    body: Annotated[AnswerRequest, Body(openapi_examples=_ANSWER_EXAMPLES)],
    rt: RuntimeDep,
    request: Request,
    response: Response,
) -> AnswerResponse:
    """Per input, the best span of its context (at most 30 tokens), with character offsets into the context.
    A context longer than the token limit is read in overlapping windows, as in training; every window of a
    request counts as one input against the operator's `max_inputs`."""
    outcome = await dispatch(rt, request, "answer", body)
    _timing_headers(response, outcome)
    results = [_answer(a) for a in outcome.outputs]
    return AnswerResponse(results=results, **outcome.served)


def _answer(a: AnswerSpan) -> Answer:
    return Answer(answer=a.text, score=a.score, start=a.start, end=a.end)


@router.get("/sizes", summary="The sizes this server serves")
async def sizes(rt: RuntimeDep) -> SizesResponse:
    """Per level: sparsity, parameters, FLOPs, the checkpoint's metrics, latency measured on this server (all at
    full depth); the model's layers, its depth order and the languages with their own ordering; per level its
    agreement with the dense size measured live (shadow re-runs, with their sample counts) beside the offline
    estimate, and the figure the agreement floor uses."""
    return live_sizes(rt)
