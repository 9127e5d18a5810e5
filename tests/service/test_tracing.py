"""Request ids and trace ids on the real server: X-Request-ID echoed (or generated) on every response, in error
bodies and in the access log with the traceparent's trace id; gzip for large bodies; HEAD on the probes."""

import logging

import httpx
import pytest
from svc_live import Live

from service.tracing import trace_id_of

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_request_ids_are_echoed_or_generated(server: Live) -> None:
    mine = httpx.post(server.url + "/v1/classify", json={"inputs": ["w1"]}, headers={"x-request-id": "job-7:a"})
    assert mine.headers["x-request-id"] == "job-7:a"
    made = httpx.get(server.url + "/healthz").headers["x-request-id"]
    assert len(made) == 32 and made != httpx.get(server.url + "/healthz").headers["x-request-id"]
    hostile = httpx.get(server.url + "/healthz", headers={"x-request-id": "a b\\x00" + "x" * 300})
    assert hostile.headers["x-request-id"] != "a b" and len(hostile.headers["x-request-id"]) == 32


def test_error_bodies_carry_the_request_id(server: Live) -> None:
    r = httpx.post(server.url + "/v1/classify", json={"inputs": [""]}, headers={"x-request-id": "r-1"})
    assert r.status_code == 422 and r.json()["request_id"] == "r-1"
    r = httpx.get(server.url + "/nowhere", headers={"x-request-id": "r-2"})
    assert r.status_code == 404 and r.json()["request_id"] == "r-2"


def test_the_access_log_has_the_request_and_trace_ids(server: Live, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="service.access"):
        headers = {"x-request-id": "r-3", "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}
        httpx.post(server.url + "/v1/classify", json={"inputs": ["w1"]}, headers=headers)
    lines = [r.getMessage() for r in caplog.records if "request_id=r-3" in r.getMessage()]
    assert lines == [f"POST /v1/classify 200 {lines[0].split()[3]} request_id=r-3 trace_id={TRACE}"]


def test_trace_ids_are_parsed_strictly() -> None:
    assert trace_id_of(f"00-{TRACE}-00f067aa0ba902b7-01") == TRACE
    for bad in (None, "", f"00-{TRACE}-00f067aa0ba902b7", f"00-{'0' * 32}-00f067aa0ba902b7-01", TRACE.upper()):
        assert trace_id_of(bad) is None


def test_large_responses_are_gzipped(server: Live) -> None:
    body = {"inputs": ["w1 w2"] * 64}
    big = httpx.post(server.url + "/v1/embed", json=body, headers={"accept-encoding": "gzip"})
    assert big.status_code == 200 and big.headers["content-encoding"] == "gzip" and len(big.json()["embeddings"]) == 64
    small = httpx.get(server.url + "/healthz", headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in small.headers


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/health", "/v2/health/live", "/v2/health/ready"])
def test_probes_answer_head(server: Live, path: str) -> None:
    r = httpx.head(server.url + path)
    assert r.status_code == 200 and r.content == b""
