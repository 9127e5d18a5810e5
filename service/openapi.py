"""The OpenAPI document, finished: short operationIds (a generated client reads `client.classify(...)`), the
response headers (X-Request-ID everywhere, Retry-After on 429/503, the timing headers on inference routes), an
example for every response, and the schemas of bodies that FastAPI does not parse itself (KServe's infer)."""

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel

from service.protocols.common import TIMING_HEADERS

_KINDS = {
    400: "unsupported",
    401: "unauthorized",
    404: "not_found",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation",
    429: "overloaded",
    503: "loading",
    504: "timeout",
}
_RETRY = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
_V1_INFERENCE = ("/v1/classify", "/v1/embed", "/v1/tokens", "/v1/answer")


def operation_id(route: APIRoute) -> str:
    """The route's function name (`classify`, `sizes`); protocol routes set their own (`openai_embeddings`)."""
    return route.name


def finish_openapi(app: FastAPI, extra_models: list[type[BaseModel]]) -> None:
    """Wrap `app.openapi` so the document is finished once, on first use."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        _add_models(schema, extra_models)
        for path, operations in schema.get("paths", {}).items():
            for op in operations.values():
                for status, response in op.get("responses", {}).items():
                    _finish_response(schema, path, int(status) if status.isdigit() else 0, response)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_models(schema: dict[str, Any], models: list[type[BaseModel]]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body


def _finish_response(schema: dict[str, Any], path: str, status: int, response: dict[str, Any]) -> None:
    headers = response.setdefault("headers", {})
    headers.setdefault("x-request-id", TIMING_HEADERS["x-request-id"])
    if status in (429, 503):
        headers.update(_RETRY)
    if status == 200 and path in _V1_INFERENCE:
        headers.update(TIMING_HEADERS)
    content = response.get("content", {}).get("application/json")
    if content is None or "example" in content or "examples" in content:
        return
    if status >= 400:
        content["example"] = _error_example(path, status, response.get("description", "error"))
        return
    example = _component_example(schema, content.get("schema", {}))
    if example is not None:
        content["example"] = example


def _error_example(path: str, status: int, description: str) -> dict[str, Any]:
    kind = _KINDS.get(status, "backend")
    if path.startswith(("/v1/embeddings", "/v1/models")):
        kind_of = "invalid_request_error" if status < 500 else "server_error"
        kind_of = "authentication_error" if status == 401 else kind_of
        return {"error": {"message": description, "type": kind_of, "param": None, "code": kind}}
    return {"error": description, "error_type": kind, "request_id": "5f0c2c4e9d1b4f7a8a3e2b1c0d9e8f7a"}


def _component_example(schema: dict[str, Any], ref: dict[str, Any]) -> Any:
    name = str(ref.get("$ref", "")).rpartition("/")[2]
    examples = schema.get("components", {}).get("schemas", {}).get(name, {}).get("examples")
    return examples[0] if examples else None
