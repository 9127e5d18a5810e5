"""The operator console: one static page at `/` with the level chart, a try-it box and live metrics.

Plain HTML, CSS and JavaScript in `service/static/` (shipped as package data): no build step and nothing
fetched from elsewhere. The page and its assets are open; the page's own calls to `/v1/*` carry the API
key that the operator types into it.

Example:
    >>> app = create_app(Settings(checkpoint="runs/sst2"))   # mounts the console
    >>> # then open http://127.0.0.1:8000/ in a browser
"""

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"

# Everything from this server, nothing else: the page must work on machines without internet.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["HEAD"])
async def index() -> FileResponse:
    """The console page."""
    headers = {"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"}
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=headers)


def mount_console(app: FastAPI) -> None:
    """Serve the page at `/` and its assets under `/console/` (the assets outside the OpenAPI schema)."""
    app.include_router(router)
    # GET / is in the schema (POST / is the HF Inference route: the path must list every method it answers)
    app.add_api_route(
        "/",
        index,
        methods=["GET"],
        summary="The operator console (HTML)",
        operation_id="console",
        response_class=FileResponse,
        responses={200: {"content": {"text/html": {}}}},
    )
    # three routes share `/`: one answer for the other methods, naming all three (Starlette names only one)
    others = ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"]
    app.add_api_route("/", _not_allowed, methods=others, include_in_schema=False)
    app.mount("/console", StaticFiles(directory=STATIC_DIR), name="console")


async def _not_allowed() -> JSONResponse:
    error = {"error": "Method Not Allowed", "error_type": "method_not_allowed"}
    return JSONResponse(error, status_code=405, headers={"Allow": "GET, HEAD, POST"})
