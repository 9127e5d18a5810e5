"""Security settings: the API key never reaches a log (debug level and start-up included), the operator's request
limits hold, CORS is off unless the operator names origins, and the Docker images run as an unprivileged user."""

import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from svc_live import live_server

from service.app import create_app
from service.settings import Settings

ERROR_KEYS = {"error", "error_type", "request_id"}  # every error body (request_id: X-Request-ID)

KEY = "sk-test-7f3a9c1e5b2d4680"
DOCKER = Path(__file__).parents[2] / "docker"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.levelname} {record.getMessage()} {record.exc_text or ''}")


@pytest.fixture
def debug_logs() -> Iterator[_Records]:
    """Every log record at DEBUG and above from this process, start-up included."""
    handler, root = _Records(), logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


def test_the_api_key_never_appears_in_logs(
    make_settings: Callable[..., Settings], debug_logs: _Records, capfd: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(api_key=KEY, log_level="debug")
    with live_server(settings, log_level="debug") as live:  # uvicorn's own logs go to stderr (capfd)
        for auth in (f"Bearer {KEY}", f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", KEY, f"Basic {KEY}", ""):
            headers = {"Authorization": auth} if auth else {}
            httpx.post(live.url + "/v1/classify", json={"inputs": ["w1"]}, headers=headers)
        right = {"Authorization": f"Bearer {KEY}"}
        httpx.post(live.url + "/v1/classify", content=b"{bad", headers={**right, "content-type": "application/json"})
        httpx.post(live.url + "/v1/classify", json={"inputs": ["w1"], "sparsity": 2}, headers=right)
        assert httpx.get(live.url + "/v1/sizes", headers=right).status_code == 200
    printed = capfd.readouterr()
    logged = "\n".join(debug_logs.lines) + printed.out + printed.err
    assert "serving" in logged and '"POST /v1/classify HTTP/1.1" 401' in logged  # start-up and access logs seen
    assert KEY not in logged and KEY[:12] not in logged
    assert KEY not in repr(settings) + str(settings) + settings.model_dump_json()


@pytest.fixture(scope="module")
def limited(make_settings: Callable[..., Settings]) -> Iterator[httpx.Client]:
    settings = make_settings(max_body_bytes=2048, max_inputs=2, max_text_chars=60, max_tokens=8)
    with live_server(settings) as live, live.client() as client:
        yield client


@pytest.mark.parametrize(
    "body,status",
    [
        ({"inputs": ["w1 w2 w3 w4 w5 w6", "w7"]}, 200),  # 2 inputs of 6 words + [CLS] [SEP] = 8 tokens
        ({"inputs": ["w1", "w2", "w3"]}, 422),  # max_inputs 2
        ({"inputs": ["w1 w2 w3 w4 w5 w6 w7"]}, 422),  # 9 tokens
        ({"inputs": [["w1 w2 w3", "w4 w5 w6"]]}, 422),  # a pair: [CLS] 3 words [SEP] 3 words [SEP] = 9 tokens
        ({"inputs": ["w1 " * 20 + "w2"]}, 422),  # 62 characters
        ({"inputs": ["w1"], "size": "x" * 1500}, 422),  # under the body limit, over the name limit
        ({"inputs": ["w1"] * 2, "size": "x" * 2100}, 413),  # over 2048 bytes
    ],
)
def test_the_operators_request_limits_hold(limited: httpx.Client, body: dict, status: int) -> None:
    r = limited.post("/v1/classify", json=body)
    assert r.status_code == status, r.text
    if status != 200:
        assert set(r.json()) == ERROR_KEYS


def test_cors_is_off_by_default() -> None:
    client = TestClient(create_app(Settings(checkpoint="never-loaded")))
    r = client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert r.status_code == 200 and not any(h.startswith("access-control-") for h in r.headers)
    preflight = client.options(
        "/v1/classify", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers


def test_cors_for_the_origins_the_operator_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNSPARSE_CORS_ORIGINS", '["https://app.example"]')
    settings = Settings(checkpoint="never-loaded", max_body_bytes=1024)  # type: ignore[call-arg]
    assert settings.cors_origins == ["https://app.example"]
    client = TestClient(create_app(settings))
    ok = {"Origin": "https://app.example"}
    r = client.post("/v1/classify", json={"inputs": ["a"]}, headers=ok)  # 503: no model, still with CORS headers
    assert r.status_code == 503 and r.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-sparsity" in r.headers["access-control-expose-headers"].lower()
    assert "access-control-allow-credentials" not in r.headers
    big = client.post("/v1/classify", content=b"x" * 2000, headers={**ok, "content-type": "application/json"})
    assert big.status_code == 413 and big.headers["access-control-allow-origin"] == "https://app.example"
    asks = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}
    preflight = client.options("/v1/classify", headers={**ok, **asks})
    assert preflight.status_code == 200 and "authorization" in preflight.headers["access-control-allow-headers"].lower()
    evil = {"Origin": "https://evil.example"}
    assert "access-control-allow-origin" not in client.get("/healthz", headers=evil).headers
    assert client.options("/v1/classify", headers={**evil, "Access-Control-Request-Method": "POST"}).status_code == 400


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_docker_images_run_as_an_unprivileged_user(dockerfile: str) -> None:
    """Every target an image is built from (train, serve) ends on `USER` with a fixed non-zero UID and GID."""
    text = (DOCKER / dockerfile).read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    targets = {s.split()[2]: s for s in stages if s.split()[1] == "AS" and s.split()[2] in ("train", "serve")}
    assert set(targets) == {"train", "serve"}
    for name, stage in targets.items():
        users = re.findall(r"^USER\s+(\S+)", stage, flags=re.M)
        assert users, f"{dockerfile} target {name} runs as root"
        args = dict(re.findall(r"^ARG (\w+)=(\S+)", stage, flags=re.M))
        user = users[-1]
        for arg, value in args.items():
            user = user.replace(f"${{{arg}}}", value)
        uid, _, gid = user.partition(":")
        assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0, (name, users[-1])
