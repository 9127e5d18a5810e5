"""What the protocol adapters share: the model id contract (`NAME`, `NAME:SIZE`), building a `SizedRequest`
from a protocol's fields, the response headers, and the error body each protocol's routes answer with.

Example:
    >>> selector_of_model(rt, "sst2:small")      # a named size
    {'size': 'small'}
    >>> selector_of_model(rt, "sst2:0.5")        # a sparsity
    {'sparsity': 0.5}
"""

import math
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.codec import Endpoint
from service.dispatch import Outcome, dispatch
from service.errors import BadInput, ServiceError
from service.runtime import Runtime
from service.schemas import Depth, SizedRequest, Sparsity
from service.settings import Settings

SELECTORS = ("sparsity", "size", "latency_budget_ms", "depth", "language")  # dynsparse's own request fields
RequestT = TypeVar("RequestT", bound=SizedRequest[Any])
Budget = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class SizeFields(BaseModel):
    """dynsparse's size fields beside a protocol's own (checked as on /v1/*: at most one of the first three)."""

    model_config = ConfigDict(extra="forbid")

    sparsity: Sparsity | None = Field(None, description="serve at this sparsity")
    size: str | None = Field(None, max_length=100, description="a named size (GET /v1/sizes)")
    latency_budget_ms: Budget | None = Field(None, description="the largest size predicted to fit this budget")
    depth: Depth | None = Field(None, description="run only this many layers")
    language: str | None = Field(None, min_length=1, max_length=64, description="the inputs' language")

    def selectors(self) -> dict[str, Any]:
        return self.model_dump(include=set(SELECTORS))


async def size_query(  # async: a plain def would run in the thread pool
    sparsity: Annotated[float | None, Query(ge=0, lt=1, description="serve at this sparsity")] = None,
    size: Annotated[str | None, Query(max_length=100, description="a named size (GET /v1/sizes)")] = None,
    latency_budget_ms: Annotated[float | None, Query(gt=0, allow_inf_nan=False, description="a budget")] = None,
    depth: Annotated[int | None, Query(ge=1, le=1024, description="run only this many layers")] = None,
    language: Annotated[str | None, Query(min_length=1, max_length=64, description="the inputs' language")] = None,
) -> dict[str, Any]:
    """The size in the query string (`?size=small`): for clients that only let you set a URL, such as
    `huggingface_hub.InferenceClient(base_url=URL + "/embed?size=small")`."""
    given = {
        "sparsity": sparsity,
        "size": size,
        "latency_budget_ms": latency_budget_ms,
        "depth": depth,
        "language": language,
    }
    return {k: v for k, v in given.items() if v is not None}


SizeQuery = Annotated[dict[str, Any], Depends(size_query)]


class Unsupported(ServiceError):
    """A protocol field that dynsparse refuses rather than silently ignores (400), naming the field."""

    status, error_type = 400, "unsupported"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelNotFound(ServiceError):
    """A model id that is not this server's (404); the message names the ids it serves."""

    status, error_type = 404, "model_not_found"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.param = "model"


def served_model_name(settings: Settings) -> str:
    """The model id: the `served_model_name` setting, or the checkpoint directory's name."""
    return settings.served_model_name or settings.checkpoint.resolve().name


def model_ids(rt: Runtime) -> list[str]:
    """The served model, then one id per named size (`NAME:small`), densest first."""
    name = served_model_name(rt.settings)
    named = sorted(rt.policy.named.items(), key=lambda kv: (kv[1], kv[0]))
    return [name, *(f"{name}:{size}" for size, _ in named)]


def selector_of_model(rt: Runtime, model: str) -> dict[str, Any]:
    """The size a model id asks for: `NAME` none (the default), `NAME:<size name>` or `NAME:<sparsity>`."""
    name = served_model_name(rt.settings)
    if model == name:
        return {}
    head, sep, size = model.partition(":")
    if head != name or not sep:
        raise ModelNotFound(f"model {model[:100]!r} is not served here; use {name!r} or {name}:<size> ({_sizes(rt)})")
    if size in rt.policy.named:
        return {"size": size}
    try:
        sparsity = float(size)
    except ValueError:
        sparsity = math.nan
    if not math.isfinite(sparsity):
        raise BadInput(f"model {model[:100]!r}: {size[:40]!r} is neither a size name nor a sparsity ({_sizes(rt)})")
    return {"sparsity": sparsity}


def _sizes(rt: Runtime) -> str:
    named = ", ".join(sorted(rt.policy.named))
    return f"sizes {named}, or a sparsity in [{rt.policy.low}, {rt.policy.high}]"


def build_request(cls: type[RequestT], inputs: Any, *selectors: Mapping[str, Any]) -> RequestT:
    """`cls(inputs=..., **selectors)`, its validation errors as one `BadInput` (422, as on /v1/*). A field given
    twice (e.g. a model id's size and the body's) is refused rather than one silently winning."""
    fields: dict[str, Any] = {}
    for given in selectors:
        for k, v in given.items():
            if v is None:
                continue
            if k in fields and fields[k] != v:
                raise BadInput(f"{k} is given twice ({fields[k]!r} and {v!r}); give it once")
            fields[k] = v
    try:
        return cls.model_validate({"inputs": inputs, **fields})
    except ValidationError as e:
        raise BadInput(describe_errors(e.errors())) from None


def describe_errors(errors: Any) -> str:
    """pydantic's error list as one readable line: `body.inputs.0: text must not be empty; ...`."""
    parts = []
    for e in list(errors)[:5]:
        if e.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON ({e.get('ctx', {}).get('error', 'decode error')})")
            continue
        where = ".".join(str(x) for x in e.get("loc", ()) if not str(x).startswith(("function-", "tuple[")))
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts) or "invalid request"


async def serve(rt: Runtime, request: Request, response: Response, task: Endpoint, body: SizedRequest[Any]) -> Outcome:
    """The one dispatch path, with the timing headers on `response`."""
    outcome = await dispatch(rt, request, task, body)
    timing_headers(response, outcome)
    return outcome


def timing_headers(response: Response, outcome: Outcome) -> None:
    """Ours and text-embeddings-inference's timing headers (milliseconds). A request shares its batch with others
    of its size: `x-inference-time` (tokenize + forward) and `x-tokenization-time` are the whole batch's, while
    `x-queue-time`, `x-compute-time` (= `x-total-time`: arrival to result), `x-compute-tokens` and
    `x-compute-characters` are this request's own."""
    served = outcome.served
    response.headers["x-sparsity"] = str(served["sparsity"])
    response.headers["x-total-time"] = str(served["latency_ms"])
    response.headers["x-queue-time"] = str(served["queue_ms"])
    response.headers["x-inference-time"] = str(served["inference_ms"])
    response.headers["x-compute-time"] = str(served["latency_ms"])
    response.headers["x-tokenization-time"] = str(outcome.tokenize_ms)
    response.headers["x-compute-tokens"] = str(outcome.tokens)
    response.headers["x-compute-characters"] = str(outcome.characters)


TIMING_HEADERS: dict[str, Any] = {  # for the OpenAPI schema of every inference route
    "x-sparsity": {"description": "the sparsity that served the request", "schema": {"type": "number"}},
    "x-total-time": {"description": "ms in the server: arrival to result", "schema": {"type": "number"}},
    "x-compute-time": {"description": "ms in the server (TEI's name; = x-total-time)", "schema": {"type": "number"}},
    "x-queue-time": {"description": "ms this request waited for its batch", "schema": {"type": "number"}},
    "x-inference-time": {
        "description": "ms of the batch it ran in (tokenize + forward), shared with the batch's other requests",
        "schema": {"type": "number"},
    },
    "x-tokenization-time": {"description": "ms the batch's tokenizer call took (shared)", "schema": {"type": "number"}},
    "x-compute-tokens": {"description": "tokens the model read for this request", "schema": {"type": "integer"}},
    "x-compute-characters": {"description": "characters of this request's inputs", "schema": {"type": "integer"}},
    "x-request-id": {
        "description": "the request's id (the client's X-Request-ID, or generated)",
        "schema": {"type": "string"},
    },
}

_OPENAI_PATHS = ("/v1/embeddings", "/v1/models")
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(
    path: str, status: int, kind: str, message: str, param: str | None = None, request_id: str | None = None
) -> dict[str, Any]:
    """The error body of the route at `path`: OpenAI's `{"error": {"message", "type", "param", "code"}}` on the
    OpenAI routes (the SDK reads the request id from the X-Request-ID header), else dynsparse's
    `{"error", "error_type", "request_id"}` (TEI's shape, with KServe's `error` string)."""
    if path.startswith(_OPENAI_PATHS):
        kind_of = _OPENAI_TYPES.get(status, "server_error")
        return {"error": {"message": message, "type": kind_of, "param": param, "code": kind}}
    body = {"error": message, "error_type": kind}
    if request_id is not None:
        body["request_id"] = request_id
    return body
