"""The app factory: lifespan (load, profile, warm up, drain), routes, and one error shape for everything.

Example:
    >>> app = create_app(Settings(checkpoint="runs/sst2"))
    >>> uvicorn.run(app)          # or: dynsparse serve runs/sst2
"""

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

import dynsparse
from dynsparse.errors import InputError
from service import probes, routes
from service.console import mount_console
from service.errors import ClientGone, ServiceError
from service.metrics import Metrics
from service.middleware import RequestGuard
from service.openapi import finish_openapi, operation_id
from service.protocols import error_body, kserve, openai, tei
from service.protocols.common import TIMING_HEADERS
from service.protocols.common import describe_errors as _describe
from service.protocols.kserve_schemas import InferRequest
from service.settings import Settings, get_settings
from service.startup import load_in_background
from service.tracing import RequestContext, request_id_of

log = logging.getLogger(__name__)

_DESCRIPTION = """One checkpoint, every size: each request picks a sparsity, a named size or a latency budget,
and is batched with others of the same size. Errors are `{"error": "...", "error_type": "..."}`."""

_HTTP_TYPES = {
    404: "not_found",
    405: "method_not_allowed",
    400: "bad_request",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def create_app(settings: Settings | None = None) -> FastAPI:
    """A FastAPI app serving `settings.checkpoint`; the model loads in the lifespan, never at import."""
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with load_in_background(app, settings, metrics):  # bound and answering 503 "loading" meanwhile
            yield

    app = FastAPI(
        title="dynsparse",
        version=dynsparse.__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,  # short operationIds: classify, sizes, openai_embeddings...
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.runtime = None  # set by the lifespan once loaded: until then routes answer 503
    app.state.loading = False  # true while the lifespan loads the model
    app.state.startup_error = None
    app.state.on_startup_failure = []  # called when the load fails (`dynsparse serve` stops the server)
    app.include_router(routes.router)
    app.include_router(probes.router)
    app.include_router(openai.router)
    app.include_router(tei.router)
    app.include_router(kserve.router)
    mount_console(app)  # the operator console at / (static, outside the OpenAPI schema)
    paths = {getattr(route, "path", "") for route in app.routes}
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes, on_reject=_count_413(metrics, paths))
    app.add_middleware(GZipMiddleware, minimum_size=4096)  # large bodies (embeddings) to clients that accept gzip
    app.add_middleware(RequestContext)  # X-Request-ID on every response (413 and 415 included), the access log
    if settings.cors_origins:  # off by default: browsers get no CORS headers unless the operator names origins
        app.add_middleware(
            CORSMiddleware,  # outermost, so errors (413 included) carry the headers too
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", "traceparent"],
            expose_headers=["Retry-After", "x-request-id", *TIMING_HEADERS],
        )
    _add_error_handlers(app, metrics)
    finish_openapi(app, [InferRequest])
    if settings.api_key is None:
        _document_no_auth(app)
    return app


def _document_no_auth(app: FastAPI) -> None:
    """Without an API key the schema must not ask for one: drop the bearer scheme from /openapi.json."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()  # cached by FastAPI in app.openapi_schema: edited once, in place
        for operations in schema.get("paths", {}).values():
            for op in operations.values():
                op.pop("security", None)  # the 401 stays listed: "when the operator set one"
        schema.get("components", {}).pop("securitySchemes", None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _count_413(metrics: Metrics, paths: set[str]) -> Callable[[Scope, str], None]:
    def on_reject(scope: Scope, kind: str) -> None:
        path = scope.get("path", "")
        endpoint = path if path in paths else "unmatched"
        metrics.errors.labels(endpoint, kind).inc()
        metrics.requests.labels(endpoint, "none", "413" if kind == "payload_too_large" else "415").inc()

    return on_reject


def _add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Every error, ours or the framework's, as `{"error", "error_type"}` with its status."""

    def reply(
        request: Request,
        status: int,
        kind: str,
        message: str,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> Response:
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")  # unmatched: no label per bad URL
        metrics.errors.labels(path, kind).inc()
        metrics.requests.labels(path, "none", str(status)).inc()
        rid = request_id_of(request.scope)
        body = error_body(request.url.path, status, kind, message, param, rid)  # each protocol's own shape
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Response:
        return reply(request, exc.status, exc.error_type, exc.message, exc.headers, getattr(exc, "param", None))

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> Response:
        return reply(request, 422, "validation", str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return reply(request, 422, "validation", _describe(exc.errors()), param=_param(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400:  # FastAPI could not parse the body (not UTF-8, nested too deep): bad input
            return reply(request, 422, "validation", _unparsable(exc))
        kind = _HTTP_TYPES.get(exc.status_code, "http")
        return reply(request, exc.status_code, kind, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it: the connection is closed

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s (request_id=%s)", request.url.path, request_id_of(request.scope))
        return reply(request, 500, "backend", f"internal error ({type(exc).__name__})")


def _unparsable(exc: Exception) -> str:
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return "the body is not valid JSON (not UTF-8 text)"
    if isinstance(cause, RecursionError):
        return "the body is not valid JSON (nested too deeply)"
    return "the body is not valid JSON" + (f" ({type(cause).__name__})" if cause is not None else "")


def _param(errors: Any) -> str | None:
    """The body field of the first validation error (OpenAI's `param`)."""
    first: dict[str, Any] = next(iter(errors), {})
    loc = tuple(first.get("loc", ()))
    return str(loc[1]) if len(loc) > 1 and loc[0] == "body" else None
