"""Helpers of the service tests: a real uvicorn server in a thread, and the Python API's answers."""

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import torch
import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

import dynsparse
from service.app import create_app
from service.settings import Settings


@dataclass
class Live:
    """A running server: its base URL, its app (for app.state) and its uvicorn server (to stop it)."""

    url: str
    app: FastAPI
    server: uvicorn.Server
    thread: threading.Thread
    loops: list[asyncio.AbstractEventLoop]  # the server's event loop, once it has started

    def tasks(self) -> int:
        """asyncio tasks alive in the server's loop (this count's own task excluded)."""

        async def count() -> int:
            return len(asyncio.all_tasks()) - 1

        return asyncio.run_coroutine_threadsafe(count(), self.loops[0]).result(10)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when absent)."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in httpx.get(self.url + "/metrics").text.splitlines():
            head, _, value = line.rpartition(" ")
            metric, _, label_text = head.partition("{")
            if metric == name and ",".join(sorted(label_text.rstrip("}").split(","))) == want:
                return float(value)
        return 0.0


@contextmanager
def live_server(settings: Settings, log_level: str = "warning", loaded: bool = True) -> Iterator[Live]:
    """Start a real uvicorn server on a free port (once the model is loaded, unless `loaded` is False: then as
    soon as it binds); stop it (gracefully) on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # the socket is handed to uvicorn: no race for the port
    port = sock.getsockname()[1]
    app = create_app(settings)
    loops: list[asyncio.AbstractEventLoop] = []
    config = uvicorn.Config(_loop_into(app, loops), log_level=log_level, timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 90
    up = lambda: server.started and (app.state.runtime is not None or not loaded)  # noqa: E731 - loads after bind
    while not up() and not app.state.startup_error and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not up():
        server.should_exit = True
        thread.join(30)
        raise RuntimeError(f"server did not start: {app.state.startup_error}")
    try:
        yield Live(f"http://127.0.0.1:{port}", app, server, thread, loops)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def _loop_into(app: FastAPI, loops: list[asyncio.AbstractEventLoop]) -> ASGIApp:
    """`app`, noting the event loop it runs in (the lifespan's first message comes before `server.started`)."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if not loops:
            loops.append(asyncio.get_running_loop())
        await app(scope, receive, send)

    return asgi


def expected_probs(model: dynsparse.ElasticModel, texts: list[str], s: float) -> torch.Tensor:
    """Softmax of the Python API's logits at sparsity `s` (B, C)."""
    b = model.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], sparsity=s).logits.softmax(-1)
