"""Body size limit (413) on the real server, declared or streamed."""

from collections.abc import Iterator

import httpx

from service.settings import Settings


def test_declared_large_body_is_413(api: httpx.Client) -> None:
    limit = Settings(checkpoint="c").max_body_bytes
    r = api.post("/v1/classify", content=b"x" * (limit + 1), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json() == {
        "error": f"request body is larger than {limit} bytes", "error_type": "payload_too_large"}  # fmt: skip


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
