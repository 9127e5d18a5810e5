"""KServe's Open Inference Protocol v2 (REST), as Triton's clients speak it: server and model metadata, health,
and `POST /v2/models/{name}/infer` with JSON or binary tensors (Triton's binary tensor extension, which
`tritonclient.http` uses by default).

Contract: the model name is `served_model_name` (`NAME:small` or `NAME:0.5` pick a size, as in the OpenAI
model id); the inputs are a BYTES tensor `text` of shape [N] and, for text pairs and question answering, a
`text_pair` [N] (the contexts); the size goes in the request's `parameters` (`sparsity`, `size`,
`latency_budget_ms`, `depth`, `language`). Outputs per task:

    text-classification   label BYTES [N], score FP32 [N], probabilities FP32 [N, labels]
    feature-extraction    embedding FP32 [N, D]  (from every checkpoint)
    token-classification  entities BYTES [N]: each the JSON list /v1/tokens returns for that text
    question-answering    answer BYTES [N], score FP32 [N], start INT64 [N], end INT64 [N]

Errors are `{"error": "..."}` (with dynsparse's `error_type` beside it).

Example:
    >>> client = tritonclient.http.InferenceServerClient("127.0.0.1:8000")
    >>> text = tritonclient.http.InferInput("text", [1], "BYTES")
    >>> text.set_data_from_numpy(np.array(["a gripping film"], dtype=object))
    >>> client.infer("sst2", [text], parameters={"size": "small"}).as_numpy("label")
    array([b'positive'], dtype=object)
"""

import json
import struct
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from pydantic import ValidationError

import dynsparse
from service.deps import RuntimeDep, require_api_key
from service.errors import BadInput
from service.probes import add_head_routes
from service.protocols.common import (
    SELECTORS,
    TIMING_HEADERS,
    ModelNotFound,
    Unsupported,
    build_request,
    describe_errors,
    selector_of_model,
    serve,
)
from service.protocols.kserve_schemas import (
    InferRequest,
    InferResponse,
    Live,
    MetadataTensor,
    ModelMetadata,
    ModelReady,
    Ready,
    ServerMetadata,
    Tensor,
)
from service.routes import ERRORS
from service.runtime import Runtime
from service.schemas import AnswerRequest, ClassifyRequest, EmbedRequest, TokensRequest

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ERRORS[401]["model"], "description": "no such model"}}
router = APIRouter(prefix="/v2", tags=["kserve"], dependencies=[Depends(require_api_key)], responses=ERRORS)
_HEADER = "inference-header-content-length"  # Triton's binary extension: the JSON header's length in bytes
_IGNORED = {"binary_data_output", "priority", "timeout"}  # request parameters a client may send; sizes aside


@router.get("", summary="KServe: server metadata", operation_id="kserve_server")
async def server_metadata() -> ServerMetadata:
    """The server's name, version and protocol extensions."""
    return ServerMetadata(name="dynsparse", version=dynsparse.__version__, extensions=["binary_tensor_data"])


@router.get("/health/live", summary="KServe: liveness", operation_id="kserve_live")
async def live() -> Live:
    """200 while the process serves HTTP."""
    return Live(live=True)


@router.get("/health/ready", summary="KServe: readiness", operation_id="kserve_ready")
async def ready(rt: RuntimeDep) -> Ready:
    """200 once the model serves; 503 while it loads or drains."""
    return Ready(ready=rt.batcher.accepting)


@router.get("/models/{model}", summary="KServe: model metadata", operation_id="kserve_model", responses=_NOT_FOUND)
async def model_metadata(model: str, rt: RuntimeDep) -> ModelMetadata:
    """The inputs and outputs of the checkpoint's task (the module docstring has the table)."""
    _resolve(rt, model)
    task = rt.engine.endpoint
    inputs = [MetadataTensor(name="text", datatype="BYTES", shape=[-1])]
    if task in ("classify", "embed", "answer"):
        inputs.append(MetadataTensor(name="text_pair", datatype="BYTES", shape=[-1]))
    outputs = [MetadataTensor(name=n, datatype=d, shape=s) for n, (d, s) in _output_specs(rt).items()]
    params = {"task": rt.engine.task, "sizes": dict(rt.policy.named)}
    return ModelMetadata(
        name=model, versions=["1"], platform="dynsparse", inputs=inputs, outputs=outputs, parameters=params
    )


@router.get(
    "/models/{model}/ready", summary="KServe: model readiness", operation_id="kserve_model_ready", responses=_NOT_FOUND
)
async def model_ready(model: str, rt: RuntimeDep) -> ModelReady:
    """200 once the model serves; 503 while it loads or drains."""
    _resolve(rt, model)
    return ModelReady(name=model, ready=rt.batcher.accepting)


def _resolve(rt: Runtime, model: str) -> dict[str, Any]:
    chosen = selector_of_model(rt, model)
    try:
        rt.policy.select(chosen.get("sparsity"), chosen.get("size"), None)
    except BadInput as e:
        raise ModelNotFound(e.message) from None
    return chosen


def _output_specs(rt: Runtime) -> dict[str, tuple[str, list[int]]]:
    task = rt.engine.endpoint
    if task == "classify":
        probs = ("FP32", [-1, len(rt.engine.labels)])
        return {
            "label": ("BYTES", [-1]),
            "score": ("FP32", [-1]),
            "probabilities": probs,
            "embedding": ("FP32", [-1, -1]),
        }
    if task == "tokens":
        return {"entities": ("BYTES", [-1]), "embedding": ("FP32", [-1, -1])}
    if task == "answer":
        return {"answer": ("BYTES", [-1]), "score": ("FP32", [-1]), "start": ("INT64", [-1]), "end": ("INT64", [-1])}
    return {"embedding": ("FP32", [-1, -1])}


_INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "JSON, or (Triton's binary extension, header Inference-Header-Content-Length) a JSON header "
        "followed by the binary tensors",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_INFER_OK: dict[int | str, dict[str, Any]] = {
    200: {"headers": TIMING_HEADERS, "description": "JSON, or JSON header + binary tensors when asked"},
    400: {"model": ERRORS[401]["model"], "description": "a tensor of the wrong name, type or shape"},
    **_NOT_FOUND,
}


@router.post(
    "/models/{model}/infer",
    summary="KServe: inference at a chosen size",
    operation_id="kserve_infer",
    openapi_extra=_INFER_BODY,
    responses=_INFER_OK,
    response_model=InferResponse,
)
async def infer(model: str, rt: RuntimeDep, request: Request, response: Response) -> Response:
    """`text` (and `text_pair`) in, the task's outputs out; the size in `parameters` or the model name."""
    chosen = _resolve(rt, model)
    body, chunks = _parse(await request.body(), request.headers.get(_HEADER))
    params = dict(body.parameters or {})
    sizes = {k: params.pop(k) for k in SELECTORS if k in params}
    unknown = sorted(set(params) - _IGNORED)
    if unknown:
        raise Unsupported(f"parameter {unknown[0][:40]!r} is not supported; known: {', '.join(SELECTORS)}")
    texts = _inputs(body, chunks)
    wanted = _wanted(rt, body)
    task = "embed" if set(wanted) == {"embedding"} else rt.engine.endpoint
    outputs, served = await _run(rt, request, response, task, texts, chosen, sizes)
    tensors = [(name, *outputs[name]) for name in wanted if name in outputs]
    binary = {o.name for o in body.outputs or [] if (o.parameters or {}).get("binary_data")}
    if (body.parameters or {}).get("binary_data_output"):
        binary = set(wanted)
    return _render(model, body.id, served, tensors, binary, response)


def _parse(raw: bytes, header: str | None) -> tuple[InferRequest, bytes]:
    """The JSON part and the binary rest (empty without the binary extension)."""
    size = len(raw)
    if header is not None:
        if not header.isdigit() or int(header) > len(raw):
            raise BadInput(f"Inference-Header-Content-Length {header[:20]!r} does not fit the body ({len(raw)} bytes)")
        size = int(header)
    try:
        return InferRequest.model_validate_json(raw[:size]), raw[size:]
    except ValidationError as e:
        raise BadInput(describe_errors(e.errors())) from None


def _inputs(body: InferRequest, chunks: bytes) -> list[Any]:
    """Per input, a text, or a (text, text_pair) pair."""
    tensors, at = {}, 0
    for t in body.inputs:
        if t.name in tensors or t.name not in ("text", "text_pair"):
            raise Unsupported(
                f"input {t.name[:40]!r}: the inputs are a BYTES tensor 'text' [N] and optionally "
                "'text_pair' [N], each once"
            )
        size = (t.parameters or {}).get("binary_data_size")
        raw = None
        if size is not None:
            if not isinstance(size, int) or size < 0 or at + size > len(chunks):
                raise BadInput(f"input {t.name!r}: binary_data_size {size!r:.20} does not fit the body")
            raw, at = chunks[at : at + size], at + size
        tensors[t.name] = _strings(t, raw)
    if "text" not in tensors:
        raise Unsupported("the input tensor 'text' (BYTES [N]) is missing")
    texts, pairs = tensors["text"], tensors.get("text_pair")
    if pairs is None:
        return texts
    if len(pairs) != len(texts):
        raise Unsupported(f"text_pair has {len(pairs)} elements and text {len(texts)}: they must match")
    return [[a, b] for a, b in zip(texts, pairs, strict=True)]


def _strings(t: Tensor, raw: bytes | None) -> list[str]:
    """A BYTES tensor of shape [N] (or [N, 1]) as N texts, from JSON data or length-prefixed binary."""
    if t.datatype != "BYTES" or not (len(t.shape) == 1 or (len(t.shape) == 2 and t.shape[1] == 1)):
        raise Unsupported(f"input {t.name!r} must be BYTES of shape [N], got {t.datatype[:16]} {t.shape}")
    n = t.shape[0]
    values: list[Any] = _unpack(raw, t.name) if raw is not None else list(_flat(t.data or []))
    if len(values) != n:
        raise Unsupported(f"input {t.name!r} has shape {t.shape} but {len(values)} elements")
    out = []
    for v in values:
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise BadInput(f"input {t.name!r}: an element is not UTF-8 text") from None
        if not isinstance(v, str):
            raise Unsupported(f"input {t.name!r}: elements are strings, got {type(v).__name__}")
        out.append(v)
    return out


def _flat(data: list[Any]) -> list[Any]:
    return [x for d in data for x in (_flat(d) if isinstance(d, list) else [d])]


def _unpack(raw: bytes, name: str) -> list[bytes]:
    """Triton's BYTES serialisation: each element is a little-endian uint32 length and its bytes."""
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise BadInput(f"input {name!r}: truncated binary BYTES data")
        (n,) = struct.unpack_from("<I", raw, at)
        if at + 4 + n > len(raw):
            raise BadInput(f"input {name!r}: truncated binary BYTES data")
        out.append(raw[at + 4 : at + 4 + n])
        at += 4 + n
    return out


def _wanted(rt: Runtime, body: InferRequest) -> list[str]:
    """The outputs asked for (all but `embedding` by default: it runs the encoder alone, as its own request)."""
    specs = _output_specs(rt)
    if not body.outputs:
        return [n for n in specs if n != "embedding" or len(specs) == 1]
    names = [o.name for o in body.outputs]
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise Unsupported(f"output {unknown[0][:40]!r} is not served; outputs are {', '.join(specs)}")
    if "embedding" in names and len(set(names)) > 1:
        raise Unsupported("ask for 'embedding' alone: it comes from the encoder, not the task head")
    return list(dict.fromkeys(names))


Outputs = dict[str, tuple[str, list[int], list[Any]]]


async def _run(
    rt: Runtime, request: Request, response: Response, task: str, texts: list[Any], *selectors: dict[str, Any]
) -> tuple[Outputs, dict[str, Any]]:
    """Serve `texts` on `task`; the output tensors as (datatype, shape, flat values)."""
    n = len(texts)
    if task == "embed":
        outcome = await serve(rt, request, response, "embed", build_request(EmbedRequest, texts, *selectors))
        dims = len(outcome.outputs[0]) if outcome.outputs else 0
        return {"embedding": ("FP32", [n, dims], [x for v in outcome.outputs for x in v])}, outcome.served
    if task == "classify":
        outcome = await serve(rt, request, response, "classify", build_request(ClassifyRequest, texts, *selectors))
        labels, c = rt.engine.labels, len(rt.engine.labels)
        return {
            "label": ("BYTES", [n], [labels[o[0]] for o in outcome.outputs]),
            "score": ("FP32", [n], [o[1] for o in outcome.outputs]),
            "probabilities": ("FP32", [n, c], [p for o in outcome.outputs for p in o.probs]),
        }, outcome.served
    if task == "tokens":
        if any(not isinstance(t, str) for t in texts):
            raise Unsupported("token classification takes 'text' alone, not 'text_pair'")
        outcome = await serve(rt, request, response, "tokens", build_request(TokensRequest, texts, *selectors))
        found = [
            json.dumps(
                [
                    {"entity_group": e.label, "score": e.score, "word": e.word, "start": e.start, "end": e.end}
                    for e in es
                ]
            )
            for es in outcome.outputs
        ]
        return {"entities": ("BYTES", [n], found)}, outcome.served
    if any(isinstance(t, str) for t in texts):
        raise Unsupported("question answering takes 'text' (the questions) and 'text_pair' (their contexts)")
    items = [{"question": q, "context": c} for q, c in texts]
    outcome = await serve(rt, request, response, "answer", build_request(AnswerRequest, items, *selectors))
    a = outcome.outputs
    return {
        "answer": ("BYTES", [n], [x.text for x in a]),
        "score": ("FP32", [n], [x.score for x in a]),
        "start": ("INT64", [n], [x.start for x in a]),
        "end": ("INT64", [n], [x.end for x in a]),
    }, outcome.served


def _render(
    model: str,
    request_id: str | None,
    served: dict[str, Any],
    tensors: list[tuple[str, str, list[int], list[Any]]],
    binary: set[str],
    response: Response,
) -> Response:
    """The response as JSON, or a JSON header and the binary tensors after it (those asked for as binary)."""
    outputs, chunks = [], []
    for name, dtype, shape, values in tensors:
        if name in binary:
            data = _pack(dtype, values)
            chunks.append(data)
            sized = {"binary_data_size": len(data)}
            outputs.append({"name": name, "datatype": dtype, "shape": shape, "parameters": sized})
        else:
            outputs.append({"name": name, "datatype": dtype, "shape": shape, "data": values})
    body: dict[str, Any] = {"model_name": model, "model_version": "1", "parameters": served, "outputs": outputs}
    if request_id is not None:
        body["id"] = request_id
    header = json.dumps(body).encode()
    headers = dict(response.headers)
    headers.pop("content-length", None)
    if not chunks:
        return Response(header, media_type="application/json", headers=headers)
    headers["Inference-Header-Content-Length"] = str(len(header))
    return Response(header + b"".join(chunks), media_type="application/octet-stream", headers=headers)


def _pack(dtype: str, values: list[Any]) -> bytes:
    if dtype == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in (v.encode() for v in values))
    return np.asarray(values, dtype="<f4" if dtype == "FP32" else "<i8").tobytes()


add_head_routes(router)
