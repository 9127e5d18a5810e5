"""Fixtures of the service tests: real servers (uvicorn on 127.0.0.1, a free port, in a thread) serving
`tiny_ckpt`, and the Python API's model to compare their answers with."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from svc_live import Live, live_server

import dynsparse
from service.settings import Settings


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """The 2 test cores are shared: one torch thread avoids spin contention (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def make_settings(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Settings]:
    """Settings for `tiny_ckpt` with a quick startup profile, cached for the whole session."""
    cache = tmp_path_factory.mktemp("profiles")
    base: dict[str, Any] = {
        "checkpoint": tiny_ckpt,
        "profile_cache_dir": cache,
        "profile_levels": 2,
        "profile_batch_sizes": [1, 4],
        "profile_seq_lens": [8, 32],
        "torch_threads": 1,
        # eager: each traced server warms ~40 graphs (~5 s on the tiny model); the shared `server` below and the
        # engine's and graphs' own tests run the traced default
        "traced_graphs": False,
    }

    def make(**overrides: Any) -> Settings:
        return Settings(**{**base, **overrides})

    return make


@pytest.fixture(scope="session")
def reference(tiny_ckpt: Path) -> dynsparse.ElasticModel:
    """The Python API's model, to check that the server answers the same."""
    return dynsparse.load(str(tiny_ckpt)).eval()


@pytest.fixture(scope="session")
def server(make_settings: Callable[..., Settings]) -> Iterator[Live]:
    """The default server, shared by every test that does not need special settings."""
    with live_server(make_settings(traced_graphs=None)) as live:  # the default: traced graphs on CPU
        yield live


@pytest.fixture
def api(server: Live) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client
