"""A pure ASGI guard in front of the app: stamps each request's arrival time and refuses bodies over the
limit (413) and bodies that are not JSON (415) before any parsing; no body is ever held beyond `max_body_bytes`."""

import time
from collections.abc import Awaitable, Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.protocols.common import error_body

OnReject = Callable[[Scope, str], None]  # (scope, error_type): for the error counter
_BINARY_PATHS = ("/v2/",)  # KServe's binary tensor extension sends octet-stream bodies


class _Disconnected(Exception):
    pass


class RequestGuard:
    """ASGI middleware: `scope["state"]["arrived"]` (monotonic seconds) and the body size limit."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, on_reject: OnReject | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["arrived"] = time.monotonic()
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._reject(scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, _then_sent(scope, send))
            return
        media = _media_type(scope)
        if media is not None and not _is_json(media, scope["path"]):
            message = f"the body must be JSON (Content-Type: application/json), got {media[:60]!r}"
            await self._refuse(scope, receive, send, 415, "unsupported_media_type", message)
            return
        try:
            body = await self._read_body(receive)
        except _Disconnected:  # the client left mid-upload: nobody to answer
            return
        if body is None:
            await self._reject(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), _then_sent(scope, send))

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body (chunked uploads too), or None as soon as it passes the limit."""
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body is larger than {self.max_body_bytes} bytes"
        await self._refuse(scope, receive, send, 413, "payload_too_large", message, {"Connection": "close"})

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        kind: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        if self.on_reject is not None:
            self.on_reject(scope, kind)
        rid = scope.get("state", {}).get("request_id")
        error = error_body(scope["path"], status, kind, message, request_id=rid)  # the route's protocol's shape
        await JSONResponse(error, status_code=status, headers=headers)(scope, receive, send)


def _media_type(scope: Scope) -> str | None:
    """The body's media type, lower-cased without parameters; None when the client sent no Content-Type."""
    raw = dict(scope["headers"]).get(b"content-type")
    return None if raw is None else raw.decode("latin-1").split(";")[0].strip().lower()


def _is_json(media: str, path: str) -> bool:
    if media == "application/json" or media.endswith("+json"):
        return True
    return media == "application/octet-stream" and path.startswith(_BINARY_PATHS)


def _then_sent(scope: Scope, send: Send) -> Send:
    """`send`, then once the response's last byte is handed to the server, the callbacks a handler left in
    `scope["state"]["on_sent"]` (the planner learns from the time the client waits, serialisation included)."""

    async def sending(message: Message) -> None:
        await send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            for callback in scope.get("state", {}).pop("on_sent", ()):
                callback()

    return sending


def _replay(body: bytes, receive: Receive) -> Callable[[], Awaitable[Message]]:
    """A `receive` that hands the buffered body over once, then the real channel (for disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
