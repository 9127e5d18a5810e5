"""A bounded soak of the real server (127.0.0.1, a fixed number of requests): mixed sizes and batch sizes, clients
that time out or hang up mid-request, a burst past the queue limit and a client that sends its body slowly.
Every request gets the Python API's answer at the sparsity that served it, or a clean 429/503/504 in the one
error shape; afterwards the server is healthy, its queue is empty, no asyncio task leaked, and memory is back."""

import asyncio
import gc
import json
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

import httpx
import pytest
import torch
from svc_live import Live, live_server

import dynsparse
from service.settings import Settings

ERROR_KEYS = {"error", "error_type", "request_id"}  # every error body (request_id: X-Request-ID)

MIXED, BURST, HANGUPS, SLOW_CHUNKS = 300, 120, 24, 12  # requests of each kind; the slow body takes 12 x 0.1 s
SPARSITIES = (0.0, 0.25, 0.5, 0.75, 0.9)
WORDS = [f"w{i}" for i in range(100)]
CLEAN_ERRORS = {429: "overloaded", 503: "not_ready", 504: "timeout"}
RETRY_S = 0.5  # a refused mixed client's back-off (the server's Retry-After is whole seconds)


@pytest.fixture(scope="module")
def soaked(make_settings: Callable[..., Settings]) -> Iterator[Live]:
    settings = make_settings(queue_limit=8, max_batch_size=8, request_timeout_s=5.0)  # a queue that bursts overflow
    with live_server(settings) as live:
        yield live


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _body(rng: random.Random) -> dict[str, Any]:
    """1 to 8 texts (some pairs) and a size: a sparsity, a named size, a latency budget or the default."""

    def text() -> str:
        return " ".join(rng.choices(WORDS, k=rng.randrange(1, 30)))

    inputs: list[Any] = [[text(), text()] if rng.random() < 0.2 else text() for _ in range(rng.randrange(1, 9))]
    pick = rng.random()
    if pick < 0.6:
        return {"inputs": inputs, "sparsity": rng.choice(SPARSITIES)}
    if pick < 0.8:
        return {"inputs": inputs, "size": rng.choice(["dense", "medium", "small"])}
    if pick < 0.9:
        return {"inputs": inputs, "latency_budget_ms": rng.choice([0.5, 5.0, 500.0])}
    return {"inputs": inputs}


class Ledger:
    """Every request's outcome, and the answers to check against the Python API afterwards."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.latencies_ms: list[float] = []
        self.answered: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.bad: list[str] = []

    def record(self, body: dict[str, Any], status: int, payload: bytes, headers: dict[str, str], ms: float) -> None:
        self.outcomes[str(status)] += 1
        try:
            data = json.loads(payload)
        except ValueError:
            self.bad.append(f"{status}: not JSON: {payload[:200]!r}")
            return
        if status == 200:
            self.latencies_ms.append(ms)
            self.answered.append((body, data))
        elif CLEAN_ERRORS.get(status) != data.get("error_type") or set(data) != ERROR_KEYS:
            self.bad.append(f"{status}: {data}")
        elif status in (429, 503) and not headers.get("retry-after", "").isdigit():
            self.bad.append(f"{status} without Retry-After")


async def _client(client: httpx.AsyncClient, ledger: Ledger, body: dict[str, Any], timeout: float) -> int:
    """One request; its status (0 when the client gave up)."""
    t0 = time.perf_counter()
    try:
        r = await client.post("/v1/classify", json=body, timeout=timeout)
    except httpx.TimeoutException:  # the client gives up: httpx closes the connection mid-request
        ledger.outcomes["client timed out"] += 1
        return 0
    ledger.record(body, r.status_code, r.content, dict(r.headers), (time.perf_counter() - t0) * 1000)
    return r.status_code


async def _mixed(client: httpx.AsyncClient, ledger: Ledger, rng: random.Random) -> None:
    """MIXED requests from 12 clients at a time (more than the queue holds); one in ten gives up after 1 to 20 ms.
    A refused client backs off before its next request, as clients that read Retry-After do (capped at RETRY_S to
    keep the soak short): one that came straight back would only measure how fast the server says 429."""
    gate = asyncio.Semaphore(12)

    async def one(body: dict[str, Any], timeout: float) -> None:
        async with gate:
            if await _client(client, ledger, body, timeout) == 429:
                await asyncio.sleep(RETRY_S)

    plan = [(_body(rng), rng.uniform(0.001, 0.02) if rng.random() < 0.1 else 30.0) for _ in range(MIXED)]
    await asyncio.gather(*(one(b, t) for b, t in plan))


async def _burst(client: httpx.AsyncClient, ledger: Ledger, rng: random.Random, after: asyncio.Event) -> None:
    """BURST requests at once, far past the queue limit of 8 (after the slow client, which a full queue would
    rightly answer 429)."""
    await after.wait()
    await asyncio.gather(*(_client(client, ledger, _body(rng), 30.0) for _ in range(BURST)))


async def _raw(live: Live, head: bytes, chunks: list[bytes], pause: float, read: bool) -> tuple[int, bytes, dict]:
    """One HTTP/1.1 request over a raw socket: the body in `chunks` with `pause` between them."""
    host, port = live.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(pause)
        if not read:
            return 0, b"", {}
        raw = await asyncio.wait_for(reader.read(), 30)  # Connection: close, so read to the end
    finally:
        writer.close()
    top, _, payload = raw.partition(b"\r\n\r\n")
    lines = top.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), payload, headers


def _request(body: dict[str, Any]) -> tuple[bytes, bytes]:
    data = json.dumps(body).encode()
    head = (
        f"POST /v1/classify HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return head, data


async def _hangups(live: Live, ledger: Ledger, rng: random.Random) -> None:
    """Clients that hang up: half of them halfway through the body, half right after sending it all."""
    for i in range(HANGUPS):
        head, data = _request(_body(rng))
        body = [data[: len(data) // 2]] if i % 2 else [data]
        await _raw(live, head, body, pause=0.0, read=False)
        ledger.outcomes["client hung up"] += 1
        await asyncio.sleep(rng.uniform(0.0, 0.05))


async def _slow(live: Live, ledger: Ledger, done: asyncio.Event) -> None:
    """A client whose body trickles in over more than a second: the others go on meanwhile."""
    body = {"inputs": ["w1 w2 w3", ["w4 w5", "w6"]], "sparsity": 0.5}
    head, data = _request(body)
    step = -(-len(data) // SLOW_CHUNKS)
    t0, answered = time.perf_counter(), len(ledger.answered)
    status, payload, headers = await _raw(
        live, head, [data[i : i + step] for i in range(0, len(data), step)], pause=0.1, read=True
    )
    ledger.record(body, status, payload, headers, (time.perf_counter() - t0) * 1000)
    # answered, or a clean 429 when the mixed traffic had filled the queue of 8 as its body arrived
    ledger.outcomes["slow client answered or refused cleanly"] += status in (200, 429)
    ledger.outcomes["answered meanwhile"] += len(ledger.answered) - answered - (status == 200)
    done.set()


async def _soak(live: Live, seed: int) -> Ledger:
    ledger, slow_done = Ledger(), asyncio.Event()
    rng = random.Random(seed)
    seeds = [random.Random(rng.random()) for _ in range(3)]
    # idle connections expire before the server's 5 s keep-alive ends them: no reuse racing a close
    limits = httpx.Limits(max_connections=BURST + 20, max_keepalive_connections=BURST + 20, keepalive_expiry=1.0)
    async with httpx.AsyncClient(base_url=live.url, limits=limits) as client:  # one pool, as a load balancer has
        await asyncio.gather(
            _mixed(client, ledger, seeds[0]),
            _burst(client, ledger, seeds[1], slow_done),
            _hangups(live, ledger, seeds[2]),
            _slow(live, ledger, slow_done),
        )
    return ledger


def _wait_until(what: Callable[[], bool], seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while not what():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_soak_answers_correctly_or_cleanly_and_recovers(soaked: Live, reference: dynsparse.ElasticModel) -> None:
    asyncio.run(_soak(soaked, seed=0))  # a first pass warms every size and the allocators
    gc.collect()
    tasks_before, rss_before = soaked.tasks(), _rss_mb()
    dropped = {r: soaked.metric("dynsparse_dropped_total", reason=r) for r in ("disconnect", "deadline")}
    t0 = time.perf_counter()
    ledger = asyncio.run(_soak(soaked, seed=1))
    wall = time.perf_counter() - t0

    assert not ledger.bad, ledger.bad[:5]
    assert _wait_until(lambda: soaked.metric("dynsparse_queue_depth") == 0), "requests stuck in the queue"
    assert _wait_until(lambda: soaked.tasks() <= tasks_before), f"tasks {tasks_before} -> {soaked.tasks()}"
    gc.collect()
    rss_after = _rss_mb()
    with soaked.client() as api:
        assert api.get("/healthz").status_code == 200 and api.get("/readyz").json()["status"] == "ready"
        assert api.post("/v1/classify", json={"inputs": ["w1"], "sparsity": 0.5}).status_code == 200

    wrong = [(body, data) for body, data in ledger.answered if not _agrees(reference, body, data)]
    assert not wrong, wrong[:3]
    out = ledger.outcomes
    assert out["200"] >= MIXED // 2 and out["429"] > 0 and out["slow client answered or refused cleanly"] == 1, out
    assert out["answered meanwhile"] >= 10, out  # the slow upload held up no one
    assert rss_after - rss_before < 64, f"RSS {rss_before:.0f} -> {rss_after:.0f} MB"

    lat = sorted(ledger.latencies_ms)
    p50, p99 = statistics.median(lat), lat[int(0.99 * (len(lat) - 1))]
    srv = sorted(d["latency_ms"] for _, d in ledger.answered)  # as the server measures it: queue + inference
    p50_srv, p99_srv = statistics.median(srv), srv[int(0.99 * (len(srv) - 1))]
    total = MIXED + BURST + HANGUPS + 1
    print(
        f"\nsoak: {total} requests in {wall:.1f} s; outcomes {dict(sorted(out.items()))}; "
        f"answered p50 {p50:.0f} ms, p99 {p99:.0f} ms (in the server: {p50_srv:.0f} / {p99_srv:.0f} ms); "
        f"{len(ledger.answered)} answers checked against the "
        f"Python API; RSS {rss_before:.0f} -> {rss_after:.0f} MB; asyncio tasks {tasks_before} -> "
        f"{soaked.tasks()}; dropped unrun or unsent: "
        f"{ {r: soaked.metric('dynsparse_dropped_total', reason=r) - n for r, n in dropped.items()} }"
    )


def _agrees(model: dynsparse.ElasticModel, body: dict[str, Any], data: dict[str, Any]) -> bool:
    """The server's answers equal the Python API's at the sparsity that served the request."""
    results = data["results"]
    if len(results) != len(body["inputs"]):
        return False
    for item, got in zip(body["inputs"], results, strict=True):
        label, score = _expected(model, json.dumps(item), data["sparsity"])
        if abs(got["score"] - score) > 1e-4 or (got["label"] != label and abs(score - 0.5) > 1e-4):
            return False
    return True


@lru_cache(maxsize=4096)
def _expected(model: dynsparse.ElasticModel, item: str, s: float) -> tuple[str, float]:
    text = json.loads(item)
    enc = model.tokenizer(*([t] for t in text) if isinstance(text, list) else [text], return_tensors="pt")
    with torch.no_grad():
        probs = model(**enc, sparsity=s).logits.softmax(-1)[0]  # (C,)
    return str(model.meta.labels[int(probs.argmax())]), float(probs.max())
