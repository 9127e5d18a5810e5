"""Request identity for logs and clients: `X-Request-ID` (the client's, or generated) on every response, in
error bodies and in one access log line per request, with the W3C `traceparent`'s trace id beside it.

Example (one log line per request, logger `service.access`):
    POST /v1/classify 200 4.1ms request_id=5f0c... trace_id=4bf92f3577b34da6a3ce929d0e0e4736
"""

import logging
import random
import re
import time
import uuid
from contextvars import ContextVar

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("service.access")

_ID = re.compile(r"[A-Za-z0-9._:/=+\-]{1,128}")  # a client's id is echoed only if it is this tame (log safety)
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def request_id_of(scope: Scope) -> str | None:
    """The request's id (set by `RequestContext`), None outside one."""
    value = scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a W3C `traceparent` header (`00-<trace id>-<parent id>-<flags>`), None if malformed."""
    match = _TRACEPARENT.fullmatch(traceparent or "")
    return match.group(1) if match and match.group(1) != "0" * 32 else None


def _new_id() -> str:
    """A random (version 4) UUID's hex, from `random`, not `os.urandom`: an id needs no secrecy, and urandom's
    syscall lets go of the GIL, which the event loop then waits to get back from the engine thread (uuid4 was
    10% of the loop's time under load, py-spy)."""
    return uuid.UUID(int=random.getrandbits(128), version=4).hex


class RequestContext:
    """ASGI middleware: `scope["state"]["request_id"]`, the `X-Request-ID` response header and the access log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = given if _ID.fullmatch(given) else _new_id()
        trace = trace_id_of(headers.get(b"traceparent", b"").decode("latin-1"))
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id.set(rid)
        status, start = 500, time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["x-request-id"] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
            ms = (time.perf_counter() - start) * 1000
            log.info(
                "%s %s %d %.1fms request_id=%s trace_id=%s",
                scope["method"],
                scope["path"],
                status,
                ms,
                rid,
                trace or "-",
            )
