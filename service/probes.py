"""Operations endpoints, open without an API key: liveness, readiness and Prometheus metrics."""

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute

from service.deps import RuntimeDep
from service.errors import NotReady
from service.metrics import Metrics
from service.schemas import ErrorResponse, Health, Ready

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Health:
    """200 while the process serves HTTP at all (restart it otherwise)."""
    return Health(status="ok")


_NOT_READY: dict[int | str, dict[str, Any]] = {503: {"model": ErrorResponse, "description": "loading or draining"}}


@router.get("/readyz", summary="Readiness: the model is loaded and warm", responses=_NOT_READY)
async def readyz(rt: RuntimeDep) -> Ready:
    """200 once the model is loaded, profiled and warm; 503 while loading or draining (route no traffic)."""
    if not rt.batcher.accepting:
        raise NotReady("the server is shutting down")
    return Ready(status="ready", device=rt.engine.device_name, queue_depth=rt.batcher.queue_length)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Requests, errors, queue and inference time, batch sizes, by size (Prometheus text format)."""
    registry: Metrics = request.app.state.metrics
    body, content_type = registry.render()
    return Response(body, media_type=content_type)


PROBE_PATHS = ("/healthz", "/readyz", "/health", "/v2/health/live", "/v2/health/ready")


def add_head_routes(router: APIRouter, paths: tuple[str, ...] = PROBE_PATHS) -> None:
    """`HEAD` on the probes of `router` (load balancers and `curl -I` use it): the GET endpoint, outside the
    schema (one operation per path there)."""
    for route in list(router.routes):
        if isinstance(route, APIRoute) and route.path in paths and "GET" in (route.methods or set()):
            router.add_api_route(
                route.path.removeprefix(router.prefix), route.endpoint, methods=["HEAD"], include_in_schema=False
            )


add_head_routes(router)
