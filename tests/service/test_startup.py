"""The server binds before the model loads: meanwhile /readyz and the inference routes answer 503
`error_type: "loading"` (a startupProbe waits on it) and /healthz 200; a load that fails says why."""

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from svc_live import live_server

from service.engine import Engine
from service.settings import Settings


def test_requests_during_the_load_get_503_loading(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, real = threading.Event(), Engine.load

    def held_load(settings: Settings) -> Engine:  # the real load, held until the test has looked
        gate.wait(60)
        return real(settings)

    monkeypatch.setattr(Engine, "load", staticmethod(held_load))
    with live_server(make_settings(), loaded=False) as live:
        for r in (httpx.get(live.url + "/readyz"), httpx.post(live.url + "/v1/classify", json={"inputs": ["w1"]})):
            assert r.status_code == 503 and r.json()["error_type"] == "loading" and r.headers["retry-after"] == "1"
        assert httpx.get(live.url + "/healthz").status_code == 200
        assert httpx.get(live.url + "/v2/health/ready").status_code == 503
        gate.set()
        deadline = time.monotonic() + 60
        while httpx.get(live.url + "/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.post(live.url + "/v1/classify", json={"inputs": ["w1"]}).status_code == 200


def test_a_load_that_fails_says_why(make_settings: Callable[..., Settings], tiny_ckpt: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in tiny_ckpt.iterdir():
        (bad / f.name).write_bytes(f.read_bytes() + (b"garbage" if f.name == "model.safetensors" else b""))
    stopped: list[Any] = []
    with pytest.raises(RuntimeError, match="checksum does not match"):
        with live_server(make_settings(checkpoint=bad)) as live:
            stopped.append(live)
    assert not stopped
