"""The API key (401) on a real server, and the dependencies replaced through `dependency_overrides`."""

from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from svc_live import Live, live_server

from service.app import create_app
from service.deps import get_settings_of_app
from service.settings import Settings

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def keyed(make_settings: Callable[..., Settings]) -> Iterator[Live]:
    with live_server(make_settings(api_key=KEY)) as live:
        yield live


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
def test_missing_or_wrong_key_is_401(keyed: Live, headers: dict[str, str]) -> None:
    r = httpx.post(keyed.url + "/v1/classify", json={"inputs": ["w1"]}, headers=headers)
    assert r.status_code == 401 and r.json()["error_type"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(keyed.url + "/v1/sizes", headers=headers).status_code == 401


def test_right_key_passes_and_probes_stay_open(keyed: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    r = httpx.post(keyed.url + "/v1/classify", json={"inputs": ["w1"]}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and calls == [(KEY.encode(), KEY.encode())]  # constant-time comparison
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(keyed.url + path).status_code == 200


def test_settings_dependency_can_be_overridden() -> None:
    app = create_app(Settings(checkpoint="never-loaded"))
    app.dependency_overrides[get_settings_of_app] = lambda: Settings(checkpoint="never-loaded", api_key="k")
    client = TestClient(app)
    assert client.post("/v1/classify", json={"inputs": ["a"]}).status_code == 401  # the key is checked first
    r = client.post("/v1/classify", json={"inputs": ["a"]}, headers={"Authorization": "Bearer k"})
    assert r.status_code == 503  # then the (unloaded) model
