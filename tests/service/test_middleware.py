"""Body size limit (413) on the real server, declared or streamed; a body that is not JSON is a 415."""

from collections.abc import Iterator

import httpx
import pytest

from service.settings import Settings


def test_declared_large_body_is_413(api: httpx.Client) -> None:
    limit = Settings(checkpoint="c").max_body_bytes
    r = api.post("/v1/classify", content=b"x" * (limit + 1), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json() == {
        "error": f"request body is larger than {limit} bytes",
        "error_type": "payload_too_large",
        "request_id": r.headers["x-request-id"],
    }


def test_streamed_large_body_is_413(api: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": ["'
        for _ in range(40):
            yield b"w1 " * 10_000  # 1.2 MB in all, with no content-length (chunked upload)

    r = api.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error_type"] == "payload_too_large"


def test_body_under_the_limit_passes(api: httpx.Client) -> None:
    r = api.post("/v1/classify", json={"inputs": ["w1 w2 " * 40] * 64})  # 64 texts of 80 tokens: within limits
    assert r.status_code == 200 and len(r.json()["results"]) == 64


def test_a_body_that_is_not_json_is_415(api: httpx.Client) -> None:
    for path in ("/v1/classify", "/v1/embeddings", "/embed", "/v2/models/x/infer"):
        r = api.post(path, content=b"inputs=a", headers={"content-type": "application/x-www-form-urlencoded"})
        error = r.json()["error"]  # each protocol's shape: OpenAI's object on /v1/embeddings
        kind = error["code"] if isinstance(error, dict) else r.json()["error_type"]
        assert r.status_code == 415 and kind == "unsupported_media_type", path
    body = b'{"inputs": ["w1"]}'
    assert api.post("/v1/classify", content=body, headers={"content-type": "text/plain"}).status_code == 415
    ok = api.post("/v1/classify", content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


@pytest.mark.anyio
async def test_callbacks_run_once_the_last_byte_is_sent() -> None:
    """The planner's margin learns from the time a client waits: `on_sent` runs after the response's last body
    message has been handed on, never before (a streamed body's earlier chunks do not count)."""
    from starlette.types import Message, Receive, Scope, Send

    from service.middleware import RequestGuard

    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        scope["state"].setdefault("on_sent", []).append(lambda: events.append("observed"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b"})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Message) -> None:
        events.append(message["type"] + ("+more" if message.get("more_body") else ""))

    scope = {"type": "http", "method": "POST", "path": "/v1/embed", "headers": [(b"content-type", b"application/json")]}
    await RequestGuard(app, max_body_bytes=1024)(scope, receive, send)
    assert events == ["http.response.start", "http.response.body+more", "http.response.body", "observed"]
    assert "on_sent" not in scope["state"]  # each callback runs once
