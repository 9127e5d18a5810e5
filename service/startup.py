"""The model loads in the background: the server binds and answers at once, `/readyz` (and every inference
route) saying 503 `error_type: "loading"` until the runtime is up, so a Kubernetes startupProbe can wait on it
instead of on refused connections.

A load that fails (a bad checkpoint or setting) leaves its one-line reason in `app.state.startup_error` and
calls each `app.state.on_startup_failure` callback (`dynsparse serve` stops uvicorn there and exits 2).
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI

from dynsparse.errors import InputError
from service.metrics import Metrics
from service.runtime import open_runtime
from service.settings import Settings

log = logging.getLogger(__name__)


@asynccontextmanager
async def load_in_background(app: FastAPI, settings: Settings, metrics: Metrics) -> AsyncIterator[None]:
    """The lifespan's body: start loading, serve meanwhile; on exit drain the runtime (or stop the load)."""
    stop = asyncio.Event()
    app.state.loading = True
    task = asyncio.create_task(_serve_runtime(app, settings, metrics, stop))
    try:
        yield
    finally:
        if app.state.runtime is None:  # still loading: nothing to drain
            task.cancel()
        stop.set()
        with suppress(asyncio.CancelledError):
            await task


async def _serve_runtime(app: FastAPI, settings: Settings, metrics: Metrics, stop: asyncio.Event) -> None:
    try:
        async with open_runtime(settings, metrics) as runtime:
            app.state.runtime = runtime
            app.state.loading = False
            await stop.wait()
    except InputError as e:  # a bad checkpoint or setting: one clear line
        _failed(app, str(e))
        log.error("cannot serve %s: %s", settings.checkpoint, e)
    except Exception as e:
        _failed(app, f"loading failed: {type(e).__name__}: {e}")
        log.exception("loading %s failed", settings.checkpoint)
    finally:
        app.state.runtime = None
        app.state.loading = False


def _failed(app: FastAPI, reason: str) -> None:
    app.state.startup_error = reason
    callbacks: list[Callable[[], None]] = getattr(app.state, "on_startup_failure", [])
    for callback in callbacks:
        callback()
