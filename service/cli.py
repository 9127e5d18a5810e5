"""`dynsparse serve CKPT`: settings from `DYNSPARSE_*` variables and flags, then uvicorn.

Bad settings or a checkpoint that cannot load end in one line on stderr and exit 2 (`dynsparse.cli`).
"""

import argparse
import logging
import os
import sys

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dynsparse.checkpoint import check_layout
from dynsparse.cli_logging import set_console_level
from dynsparse.errors import InputError
from service.app import create_app
from service.settings import Settings

log = logging.getLogger(__name__)
_FLAGS = ("host", "port", "device", "dtype", "default_size", "levels", "max_batch_size")


def build_settings(args: argparse.Namespace) -> Settings:
    """Flags given on the command line override the environment; a bad value raises `InputError`."""
    given = {k: v for k in _FLAGS if (v := getattr(args, k, None)) is not None}
    try:
        return Settings(checkpoint=args.checkpoint, **given)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise InputError(f"setting {where} (flag --{where} or DYNSPARSE_{where.upper()}): {first['msg']}") from None


def _check_checkpoint(settings: Settings) -> None:
    """Fail before the server starts on common checkpoint mistakes (the full load is in the lifespan)."""
    check_layout(settings.checkpoint)


def _quiet_startup_failure(app: FastAPI) -> ASGIApp:
    """`app`, minus the traceback uvicorn logs when a bad checkpoint fails the lifespan (one line is printed)."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_quietly(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and app.state.startup_error:
                message = {**message, "message": ""}
            await send(message)

        await app(scope, receive, send_quietly if scope["type"] == "lifespan" else send)

    return asgi


def _passive_openmp() -> None:
    """Restart this command with `OMP_WAIT_POLICY=PASSIVE` unless the variable is set (the operator's value wins).
    Called as a function (tests, an embedding program) it never restarts.

    OpenMP reads it once, when torch loads, so it cannot be changed later in the process. By default its threads
    spin at every barrier; a server's event loop (or any other process) needing the same cores then leaves a
    spinning thread waiting for a descheduled one, a scheduler slice per operator: on 2 cores shared with other
    work a one-sentence request took 597 ms, and 14 ms with passive waiting. The PID stays (exec), so supervisors
    and `kill` see the same process; it costs one more start of the interpreter."""
    argv = list(getattr(sys, "orig_argv", []))  # the interpreter's own flags (-u, -X ...) included
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    command = getattr(spec, "name", None) == "dynsparse.cli" or os.path.basename(sys.argv[0]) == "dynsparse"
    if "OMP_WAIT_POLICY" in os.environ or not command or len(argv) < 2:  # the operator's, or not the command
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, [sys.executable, *argv[1:]])
    except OSError as e:  # serve on, with OpenMP's default waiting
        log.warning("could not restart with OMP_WAIT_POLICY=PASSIVE (%s); OpenMP threads will spin", e)


def _log_at(level: str) -> None:
    """`log_level` holds for the service's own logs too (the access line per request included), not only uvicorn's:
    below the level no record is even made."""
    numeric = logging.getLevelName(level.upper())
    logging.getLogger("service").setLevel(numeric)
    if numeric < logging.INFO:  # the console shows INFO and up by default
        set_console_level(numeric)


def serve(args: argparse.Namespace) -> None:
    """Run the HTTP server until SIGINT/SIGTERM; in-flight requests finish before it exits."""
    settings = build_settings(args)
    _check_checkpoint(settings)
    _log_at(settings.log_level)
    _passive_openmp()
    app = create_app(settings)
    config = uvicorn.Config(
        _quiet_startup_failure(app),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,  # every admitted request gets its deadline
        access_log=False,  # service.tracing logs each request, with its X-Request-ID and trace id
    )
    server = uvicorn.Server(config)
    app.state.on_startup_failure.append(lambda: setattr(server, "should_exit", True))  # the model failed to load
    try:
        server.run()
    except SystemExit:  # uvicorn exits 3 when the lifespan fails; a bad checkpoint is a usage error (2)
        if app.state.startup_error:
            raise InputError(app.state.startup_error) from None
        raise
    if app.state.startup_error or not server.started:
        raise InputError(app.state.startup_error or "the server did not start (see the log above)")
