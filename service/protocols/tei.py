"""Hugging Face's serving routes: text-embeddings-inference's `/embed`, `/predict`, `/tokenize`, `/info` and
`/health`, and an Inference endpoint's `POST /` (`{"inputs", "parameters"}`, answered as the checkpoint's task
answers), so that `huggingface_hub.InferenceClient(base_url=URL)` works unchanged.

The size goes in the body (dynsparse's `sparsity`, `size`, `latency_budget_ms`, `depth`, `language`), in
`parameters` (`POST /`), or in the query string (`?size=small`), the one place a URL-only client can put it.
Errors are TEI's `{"error", "error_type"}`.

Example:
    >>> client = InferenceClient(base_url="http://127.0.0.1:8000?size=small")
    >>> client.text_classification("a gripping film")[0]
    TextClassificationOutputElement(label='positive', score=0.97)
"""

import math
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, Response

import dynsparse
from service.codec import AnswerSpan, EntitySpan, LabelScore
from service.deps import RuntimeDep, require_api_key, serving
from service.dispatch import check_limits
from service.errors import BadInput
from service.probes import add_head_routes
from service.protocols.common import (
    SELECTORS,
    TIMING_HEADERS,
    SizeQuery,
    Unsupported,
    build_request,
    serve,
    served_model_name,
)
from service.protocols.tei_schemas import (
    EmbedInput,
    InferenceInput,
    Info,
    PredictInput,
    Score,
    SimpleToken,
    TeiOptions,
    TokenizeInput,
)
from service.routes import ERRORS, OTHER_TASK
from service.runtime import Runtime
from service.schemas import AnswerRequest, ClassifyRequest, EmbedRequest, ErrorResponse, Health, TokensRequest

_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    400: {"model": ErrorResponse, "description": "a TEI option dynsparse does not support (truncate, prompt_name...)"},
}
router = APIRouter(tags=["huggingface"], dependencies=[Depends(require_api_key)], responses=_ERRORS)


def _ok(example: Any) -> dict[int | str, dict[str, Any]]:
    return {200: {"headers": TIMING_HEADERS, "content": {"application/json": {"example": example}}}}


_SCORES = [{"label": "positive", "score": 0.97}, {"label": "negative", "score": 0.03}]


# -- TEI ---------------------------------------------------------------------------------------------------------
@router.post(
    "/embed",
    summary="TEI: embeddings at a chosen size",
    operation_id="tei_embed",
    responses=_ok([[0.031, -0.112, 0.054]]),
)
async def embed(
    body: Annotated[EmbedInput, Body()], rt: RuntimeDep, request: Request, response: Response, query: SizeQuery
) -> list[list[float]]:
    """`POST /v1/embed`'s vectors as a bare list, one per input (a single text too)."""
    _check_embed_options(body.normalize, body.dimensions, body)
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    outcome = await serve(rt, request, response, "embed", build_request(EmbedRequest, texts, body.selectors(), query))
    return list(outcome.outputs)


@router.post(
    "/predict",
    summary="TEI: every label's score at a chosen size",
    operation_id="tei_predict",
    responses={**_ok(_SCORES), **OTHER_TASK},
    dependencies=[Depends(serving("classify"))],
)
async def predict(
    body: Annotated[PredictInput, Body()], rt: RuntimeDep, request: Request, response: Response, query: SizeQuery
) -> list[Score] | list[list[Score]]:
    """Every label with its probability (logits with `raw_scores`), best first; a list per input for a list."""
    _check_options(body)
    single = isinstance(body.inputs, str) or (len(body.inputs) == 2 and all(isinstance(x, str) for x in body.inputs))
    items = [body.inputs] if single else list(body.inputs)
    sized = build_request(ClassifyRequest, items, body.selectors(), query)
    outcome = await serve(rt, request, response, "classify", sized)
    kind = "none" if body.raw_scores else "softmax"
    results = [_scores(rt.engine.labels, out, kind, None) for out in outcome.outputs]
    return results[0] if single else results


_TOKENS = [
    [
        {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None},
        {"id": 2307, "text": "good", "special": False, "start": 0, "stop": 4},
    ]
]


@router.post(
    "/tokenize",
    summary="TEI: the tokenizer's tokens",
    operation_id="tei_tokenize",
    responses={200: {"content": {"application/json": {"example": _TOKENS}}}},
)
async def tokenize(body: TokenizeInput, rt: RuntimeDep) -> list[list[SimpleToken]]:
    """Per text, its tokens with character offsets (`start`, `stop`; none for special tokens)."""
    if body.prompt_name is not None:
        raise Unsupported("prompt_name is not supported: this server has no prompts", "prompt_name")
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    build_request(EmbedRequest, texts)  # the same text checks as everywhere
    check_limits(rt, texts)
    # on the engine's worker thread: a fast tokenizer is not safe to use from two threads at once
    encoded = await rt.batcher.call(_tokenize, rt.engine.tokenizer, texts, body.add_special_tokens)
    return [[SimpleToken(**t) for t in text] for text in encoded]


def _tokenize(tokenizer: Any, texts: list[str], specials: bool) -> list[list[dict[str, Any]]]:
    enc = tokenizer(texts, add_special_tokens=specials, return_offsets_mapping=True, return_special_tokens_mask=True)
    out = []
    for k, text in enumerate(texts):
        ids, marks, offsets = enc["input_ids"][k], enc["special_tokens_mask"][k], enc["offset_mapping"][k]
        out.append(
            [
                {
                    "id": i,
                    "text": tokenizer.convert_ids_to_tokens(i) if m else text[a:b],
                    "special": bool(m),
                    "start": None if m else a,
                    "stop": None if m else b,
                }
                for i, m, (a, b) in zip(ids, marks, offsets, strict=True)
            ]
        )
    return out


@router.get("/info", summary="TEI: the model and the server's limits", operation_id="tei_info")
async def info(rt: RuntimeDep) -> Info:
    """TEI's fields (model_id is `served_model_name`), with the checkpoint's task and dynsparse's sizes."""
    e, s = rt.engine, rt.settings
    return Info(
        model_id=served_model_name(s),
        model_dtype=str(e.dtype).removeprefix("torch."),
        model_type=_model_type(rt),
        max_concurrent_requests=s.queue_limit,
        max_input_length=e.max_tokens,
        max_batch_tokens=s.max_batch_size * e.max_tokens,
        max_batch_requests=s.max_batch_size,
        max_client_batch_size=s.max_inputs,
        version=dynsparse.__version__,
        task=e.task,
        sizes=dict(rt.policy.named),
        default=rt.sizes.default,
        allowed=[rt.policy.low, rt.policy.high],
    )


def _model_type(rt: Runtime) -> dict[str, Any]:
    labels = rt.engine.labels
    ids = {"id2label": dict(enumerate(labels)), "label2id": {x: i for i, x in enumerate(labels)}}
    kind = {
        "text-classification": "classifier",
        "token-classification": "token_classifier",
        "question-answering": "question_answering",
    }.get(rt.engine.task)
    return {kind: ids} if kind else {"embedding": {"pooling": "mean"}}


@router.get(
    "/health", summary="TEI: 200 once the model serves", operation_id="tei_health", responses={503: ERRORS[503]}
)
async def health(rt: RuntimeDep) -> Health:
    """200 when the model is loaded and serving; 503 while it loads or drains (as /readyz)."""
    return Health(status="ok")


# -- an Inference endpoint: POST / answers as the checkpoint's task -------------------------------------------------
_PARAMETERS = {
    "classify": {"top_k", "function_to_apply"},
    "tokens": {"aggregation_strategy"},
    "answer": {"top_k"},
    "embed": set(),
}


@router.post(
    "/",
    summary="HF Inference: the checkpoint's task at a chosen size",
    operation_id="hf_infer",
    responses=_ok([_SCORES]),
)
async def infer(
    body: Annotated[InferenceInput, Body()], rt: RuntimeDep, request: Request, response: Response, query: SizeQuery
) -> Any:
    """As a Hugging Face Inference endpoint answers for the task (`text_classification`, `token_classification`,
    `question_answering`, `feature_extraction` of `InferenceClient`); the size in `parameters`, the body or the
    query string."""
    task = rt.engine.endpoint
    params = dict(body.parameters or {})
    sizes = {k: params.pop(k) for k in SELECTORS if k in params}
    unknown = sorted(set(params) - _PARAMETERS[task])
    if unknown:
        known = ", ".join(sorted(_PARAMETERS[task] | set(SELECTORS)))
        raise Unsupported(
            f"parameter {unknown[0][:40]!r} is not supported for {rt.engine.task}; known: {known}",
            f"parameters.{unknown[0][:40]}",
        )
    _check_options(body)
    selectors = (body.selectors(), sizes, query)
    if task == "classify":
        return await _classify(rt, request, response, body.inputs, params, selectors)
    if task == "tokens":
        return await _tokens(rt, request, response, body.inputs, params, selectors)
    if task == "answer":
        return await _answer(rt, request, response, body.inputs, params, selectors)
    _check_embed_options(body.normalize, None, body)
    outcome = await serve(rt, request, response, "embed", build_request(EmbedRequest, _listed(body.inputs), *selectors))
    return outcome.outputs


Selectors = tuple[dict[str, Any], ...]


async def _classify(
    rt: Runtime, request: Request, response: Response, inputs: Any, params: dict[str, Any], selectors: Selectors
) -> list[list[Score]]:
    """A list of scores per input, best first (`top_k`: the first k; `function_to_apply`: softmax, sigmoid or
    none), as the text-classification pipeline answers with `top_k=None`."""
    top_k, kind = params.get("top_k"), params.get("function_to_apply") or "softmax"
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise BadInput(f"parameters.top_k must be a positive integer, got {top_k!r:.40}")
    if kind not in ("softmax", "sigmoid", "none"):
        raise BadInput(f"parameters.function_to_apply is softmax, sigmoid or none, got {kind!r:.40}")
    items = [_pair(x) for x in _listed(inputs)]
    outcome = await serve(rt, request, response, "classify", build_request(ClassifyRequest, items, *selectors))
    return [_scores(rt.engine.labels, out, kind, top_k) for out in outcome.outputs]


def _pair(x: Any) -> Any:
    """{"text", "text_pair"} (the pipeline's pair) as ["text", "text_pair"]; anything else as it is."""
    if isinstance(x, dict) and set(x) <= {"text", "text_pair"} and "text" in x:
        return [x["text"], x["text_pair"]] if "text_pair" in x else x["text"]
    return x


async def _tokens(
    rt: Runtime, request: Request, response: Response, inputs: Any, params: dict[str, Any], selectors: Selectors
) -> list[Any]:
    """Entities as the token-classification pipeline groups them (`aggregation_strategy="simple"`)."""
    strategy = params.get("aggregation_strategy")
    if strategy not in (None, "simple"):
        raise Unsupported(
            f"aggregation_strategy {strategy!r:.40} is not supported: entities are grouped as 'simple'",
            "parameters.aggregation_strategy",
        )
    outcome = await serve(rt, request, response, "tokens", build_request(TokensRequest, _listed(inputs), *selectors))
    results = [[_entity(e) for e in found] for found in outcome.outputs]
    return results[0] if isinstance(inputs, str) else results


def _entity(e: EntitySpan) -> dict[str, Any]:
    return {"entity_group": e.label, "score": e.score, "word": e.word, "start": e.start, "end": e.end}


async def _answer(
    rt: Runtime, request: Request, response: Response, inputs: Any, params: dict[str, Any], selectors: Selectors
) -> Any:
    """The best span per question, as the question-answering pipeline answers (one dict for one question)."""
    if params.get("top_k") not in (None, 1):
        raise Unsupported("top_k is not supported: one answer per question", "parameters.top_k")
    items = _listed(inputs)
    outcome = await serve(rt, request, response, "answer", build_request(AnswerRequest, items, *selectors))
    results = [_answer_dict(a) for a in outcome.outputs]
    return results[0] if isinstance(inputs, dict) else results


def _answer_dict(a: AnswerSpan) -> dict[str, Any]:
    return {"answer": a.text, "score": a.score, "start": a.start, "end": a.end}


# -- helpers -------------------------------------------------------------------------------------------------------
def _listed(inputs: Any) -> list[Any]:
    """A list as it is; anything else (a text, a dict, a wrong type the request model then names) as one input."""
    return inputs if isinstance(inputs, list) else [inputs]


def _scores(labels: list[str], out: LabelScore, kind: str, top_k: int | None) -> list[Score]:
    """Every label's score, best first: probabilities (softmax), sigmoids or logits (none)."""
    if kind == "softmax":
        values = list(out.probs)
    elif kind == "sigmoid":
        values = [1 / (1 + math.exp(-x)) for x in out.logits]
    else:
        values = list(out.logits)
    order = sorted(range(len(values)), key=lambda i: -values[i])[:top_k]
    return [Score(label=labels[i], score=values[i]) for i in order]


def _check_options(body: TeiOptions) -> None:
    if body.truncate:
        raise Unsupported("truncate is not supported: a text over the token limit is refused", "truncate")
    if body.prompt_name is not None:
        raise Unsupported("prompt_name is not supported: this server has no prompts", "prompt_name")


def _check_embed_options(normalize: bool, dimensions: int | None, body: TeiOptions) -> None:
    _check_options(body)
    if not normalize:
        raise Unsupported("normalize=false is not supported: the embeddings are unit vectors", "normalize")
    if dimensions is not None:
        raise Unsupported("dimensions is not supported: every size returns full-width vectors", "dimensions")


add_head_routes(router)
