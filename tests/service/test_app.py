"""The real server over real HTTP: every endpoint, every error shape, concurrency, parity with the Python API."""

import asyncio
import gc
from collections.abc import Callable

import httpx
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from svc_live import Live, expected_probs, live_server

import dynsparse
from service.app import create_app
from service.runtime import frozen_heap
from service.settings import Settings

ERROR_KEYS = {"error", "error_type", "request_id"}  # every error body (request_id: X-Request-ID)

TEXTS = ["w1 w2 w3", "w4 w5"]


def is_error(r: httpx.Response, status: int, error_type: str) -> bool:
    body = r.json()
    return r.status_code == status and set(body) == ERROR_KEYS and body["error_type"] == error_type


@pytest.mark.parametrize("s", [0.0, 0.5, 0.9])
def test_classify_equals_the_python_api(api: httpx.Client, reference: dynsparse.ElasticModel, s: float) -> None:
    r = api.post("/v1/classify", json={"inputs": TEXTS, "sparsity": s})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["sparsity"] == s and body["latency_ms"] >= body["inference_ms"] > 0 and body["degraded"] is False
    assert r.headers["x-sparsity"] == str(s) and float(r.headers["x-total-time"]) > 0
    probs = expected_probs(reference, TEXTS, s)
    labels = list(reference.meta.labels)
    assert [x["label"] for x in body["results"]] == [labels[i] for i in probs.argmax(-1).tolist()]
    assert [x["score"] for x in body["results"]] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-5)


def test_named_sizes_default_and_pairs(api: httpx.Client) -> None:
    small = api.post("/v1/classify", json={"inputs": TEXTS, "size": "small"}).json()
    assert small["sparsity"] == 0.9 and small["size"] == "small"
    default = api.post("/v1/classify", json={"inputs": TEXTS}).json()
    assert default["sparsity"] == 0.0 and default["size"] is None
    pair = api.post("/v1/classify", json={"inputs": [["w1 w2", "w3"], "w1"]})
    assert pair.status_code == 200 and len(pair.json()["results"]) == 2


def test_embed_equals_the_python_api(api: httpx.Client, reference: dynsparse.ElasticModel) -> None:
    r = api.post("/v1/embed", json={"inputs": ["w1 w2 w3"], "sparsity": 0.5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dimensions"] == reference.shape.hidden == len(body["embeddings"][0])
    ids = reference.tokenizer(["w1 w2 w3"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = F.normalize(reference.encode(ids, sparsity=0.5).mean(1), dim=-1)[0]
    assert torch.tensor(body["embeddings"][0]) == pytest.approx(want, abs=1e-5)


def test_latency_budget(api: httpx.Client) -> None:
    roomy = api.post("/v1/classify", json={"inputs": ["w1 w2"], "latency_budget_ms": 100000}).json()
    assert roomy["sparsity"] == 0.0 and roomy["budget_met"] is True
    tight = api.post("/v1/classify", json={"inputs": ["w1 w2"], "latency_budget_ms": 0.001}).json()
    assert tight["sparsity"] == 0.9 and tight["budget_met"] is False


def test_sizes_table(api: httpx.Client, reference: dynsparse.ElasticModel) -> None:
    body = api.get("/v1/sizes").json()
    levels = body["levels"]
    assert [row["sparsity"] for row in levels] == pytest.approx([i / 10 for i in range(10)])
    assert all(row["latency_ms"] > 0 and row["flops"] > 0 and "accuracy" in row for row in levels)
    assert levels[0]["params"] > levels[-1]["params"] and levels[0]["flops"] > levels[-1]["flops"]
    assert levels[0]["names"] == ["dense"] and body["sizes"]["small"] == 0.9 and body["allowed"] == [0.0, 0.9]
    assert body["metric"] == "accuracy" and body["profile"] and body["device"].startswith("cpu")


def test_probes_and_metrics(api: httpx.Client, server: Live) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    before = server.metric("dynsparse_requests_total", endpoint="/v1/classify", size="0.30", code="200")
    api.post("/v1/classify", json={"inputs": ["w1"], "sparsity": 0.3})
    text = api.get("/metrics").text
    assert "# TYPE dynsparse_queue_seconds histogram" in text and "dynsparse_batch_size_bucket" in text
    assert "dynsparse_inference_seconds_count" in text
    assert server.metric("dynsparse_requests_total", endpoint="/v1/classify", size="0.30", code="200") == before + 1


def test_a_serving_server_keeps_the_collector_off_its_startup_heap(api: httpx.Client) -> None:
    """The model and libraries are frozen for the garbage collector: a full collection over them paused the whole
    server for about 160 ms under load."""
    assert api.get("/readyz").status_code == 200
    assert gc.get_freeze_count() > 10_000  # torch, transformers and the model: far more than a request makes


def test_a_server_that_stops_leaves_the_others_frozen() -> None:
    """The freeze is process-wide: a second server stopping must not hand the first one's heap back."""
    with frozen_heap():
        with frozen_heap():
            pass
        assert gc.get_freeze_count() > 10_000


def test_openapi_and_docs(api: httpx.Client) -> None:
    assert "swagger" in api.get("/docs").text.lower()
    spec = api.get("/openapi.json").json()
    classify = spec["paths"]["/v1/classify"]["post"]
    assert {"sparsity", "size", "budget", "pair"} <= set(
        classify["requestBody"]["content"]["application/json"]["examples"]
    )
    assert {"401", "422", "429", "503", "504"} <= set(classify["responses"])
    assert {"/v1/embed", "/v1/sizes", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])


LONG_WORDS = " ".join(f"w{i % 90}" for i in range(300))  # over the tiny model's 126 tokens


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": [], "sparsity": 0.5},
        {"inputs": [""]},
        {"inputs": ["   "]},
        {"inputs": ["a"], "sparsity": 1.5},
        {"inputs": ["a"], "sparsity": -0.1},
        {"inputs": ["a"], "sparsity": 0.95},  # a valid sparsity outside the allowed (trained) range
        {"inputs": ["a"], "sparsity": 0.5, "latency_budget_ms": 10},
        {"inputs": ["a"], "size": "small", "sparsity": 0.5},
        {"inputs": "not-a-list-or-ok", "sparsity": "big"},
        {"inputs": ["a"], "sparsity": "0.5"},
        {"inputs": ["a"], "sparsity": True},
        {"inputs": [1, 2]},
        {"inputs": [["a", "b", "c"]]},
        {"inputs": ["a"], "size": "no-such-size"},
        {"inputs": ["a"], "latency_budget_ms": 0},
        {"inputs": ["a"], "sparsty": 0.5},
        {},
        {"inputs": ["w1"] * 65},
        {"inputs": ["w1 " * 7000]},
        {"inputs": [LONG_WORDS]},
    ],
)
def test_bad_input_is_422_in_one_shape(api: httpx.Client, body: object) -> None:
    r = api.post("/v1/classify", json=body)
    assert is_error(r, 422, "validation"), r.text
    assert len(r.json()["error"]) > 5


def test_malformed_json_and_unknown_routes(api: httpx.Client) -> None:
    r = api.post("/v1/classify", content=b"{not json", headers={"content-type": "application/json"})
    assert is_error(r, 422, "validation")
    assert is_error(api.get("/v1/nope"), 404, "not_found")
    assert is_error(api.get("/v1/classify"), 405, "method_not_allowed")
    assert is_error(api.post("/v1/embed", json={"inputs": []}), 422, "validation")


def test_64_concurrent_mixed_size_requests(server: Live, reference: dynsparse.ElasticModel) -> None:
    sizes = [0.0, 0.3, 0.6, 0.9]
    texts = [f"w{i % 50} w{(i * 7) % 50}" for i in range(64)]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            posts = [
                client.post("/v1/classify", json={"inputs": [t], "sparsity": sizes[i % 4]}) for i, t in enumerate(texts)
            ]
            return await asyncio.gather(*posts)

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 64
    for i, r in enumerate(responses):
        want = expected_probs(reference, [texts[i]], sizes[i % 4]).max().item()
        assert r.json()["sparsity"] == sizes[i % 4]
        assert r.json()["results"][0]["score"] == pytest.approx(want, abs=1e-5)


def test_bad_requests_do_not_disturb_good_ones(server: Live) -> None:
    bad = [{"inputs": [LONG_WORDS]}, {"inputs": []}, {"inputs": ["x"], "size": "nope"}]

    async def mixed() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            posts = [
                client.post("/v1/classify", json=bad[i % 3] if i % 2 else {"inputs": ["w1 w2"], "sparsity": 0.5})
                for i in range(24)
            ]
            return await asyncio.gather(*posts)

    codes = [r.status_code for r in asyncio.run(mixed())]
    assert codes == [422 if i % 2 else 200 for i in range(24)]
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_not_ready_is_503_in_one_shape(make_settings: object) -> None:
    app = create_app(Settings(checkpoint="never-loaded"))  # no lifespan run: the model is not loaded
    client = TestClient(app)
    for r in (client.get("/readyz"), client.post("/v1/classify", json={"inputs": ["a"]})):
        assert is_error(r, 503, "not_ready") and r.headers["retry-after"] == "1"
    assert client.get("/healthz").status_code == 200


def test_an_operator_grid_serves_the_next_denser_level(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(levels=[0.0, 0.5, 0.8], sizes={"fast": 0.8}, default_size="fast")
    with live_server(settings) as live, live.client() as api:
        served = [
            api.post("/v1/classify", json={"inputs": ["w1"], "sparsity": s}).json()["sparsity"]
            for s in (0.0, 0.3, 0.5, 0.79, 0.9)
        ]
        assert served == [0.0, 0.0, 0.5, 0.5, 0.8]
        assert api.post("/v1/classify", json={"inputs": ["w1"]}).json()["sparsity"] == 0.8
        assert is_error(api.post("/v1/classify", json={"inputs": ["w1"], "sparsity": 0.95}), 422, "validation")
        table = api.get("/v1/sizes").json()
        assert [row["sparsity"] for row in table["levels"]] == [0.0, 0.5, 0.8] and table["grid"] == [0.0, 0.5, 0.8]
