"""The Hugging Face routes with the real `huggingface_hub.InferenceClient` against real uvicorn servers (a
classification, a token-classification, a QA and an embeddings checkpoint): each task's answer is the /v1
endpoint's at the same size, for each way of choosing it; TEI's /predict, /tokenize, /info and /health; bad
requests get TEI's error shape."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import huggingface_hub
import numpy as np
import pytest
from huggingface_hub import InferenceClient
from svc_live import Live, live_server

from service.settings import Settings

ERROR_KEYS = {"error", "error_type", "request_id"}  # every error body (request_id: X-Request-ID)

TEXTS = ["w1 w2 w3", "w4 w5"]


@pytest.fixture(autouse=True)
def _online_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub refuses every request under HF_HUB_OFFLINE=1 (set for the tests), 127.0.0.1 included."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="module")
def ner(make_settings: Callable[..., Settings], ner_ckpt: Path) -> Iterator[Live]:
    with live_server(make_settings(checkpoint=ner_ckpt)) as live:
        yield live


@pytest.fixture(scope="module")
def qa(make_settings: Callable[..., Settings], qa_ckpt: Path) -> Iterator[Live]:
    with live_server(make_settings(checkpoint=qa_ckpt)) as live:
        yield live


@pytest.fixture(scope="module")
def emb(make_settings: Callable[..., Settings], embed_ckpt: Path) -> Iterator[Live]:
    with live_server(make_settings(checkpoint=embed_ckpt)) as live:
        yield live


def v1(live: Live, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(live.url + path, json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


QUERIES = [("", {}), ("?size=small", {"size": "small"}), ("?sparsity=0.5", {"sparsity": 0.5})]


@pytest.mark.parametrize(("query", "selector"), QUERIES)
def test_text_classification_equals_v1_classify(server: Live, query: str, selector: dict[str, Any]) -> None:
    want = v1(server, "/v1/classify", {"inputs": [TEXTS[0]], **selector})["results"][0]
    got = InferenceClient(base_url=server.url + query).text_classification(TEXTS[0])
    assert got[0].label == want["label"] and got[0].score == pytest.approx(want["score"], abs=1e-6)
    assert [g.score for g in got] == sorted((g.score for g in got), reverse=True)
    assert sum(g.score for g in got) == pytest.approx(1.0, abs=1e-5)
    assert len(got) == len(server.app.state.runtime.engine.labels)


def test_top_k_and_sizes_in_parameters(server: Live) -> None:
    want = v1(server, "/v1/classify", {"inputs": TEXTS, "sparsity": 0.9})["results"]
    body = {"inputs": TEXTS, "parameters": {"top_k": 1, "sparsity": 0.9}}
    r = httpx.post(server.url + "/", json=body)
    assert r.status_code == 200 and r.headers["x-sparsity"] == "0.9"
    assert [[s["label"] for s in x] for x in r.json()] == [[w["label"]] for w in want]
    assert InferenceClient(base_url=server.url).text_classification(TEXTS[0], top_k=1)[0].label == want[0]["label"]


@pytest.mark.parametrize(("query", "selector"), QUERIES[:2])
def test_feature_extraction_equals_v1_embed(server: Live, emb: Live, query: str, selector: dict[str, Any]) -> None:
    for live, url in ((emb, emb.url + query), (server, server.url + "/embed" + query)):  # task, or TEI's /embed
        want = np.array(v1(live, "/v1/embed", {"inputs": TEXTS, **selector})["embeddings"])
        got = InferenceClient(base_url=url).feature_extraction(TEXTS)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_token_classification_equals_v1_tokens(ner: Live) -> None:
    text = "w2 w4  w7 w8 w10 w12 w3 w6"
    want = v1(ner, "/v1/tokens", {"inputs": [text], "size": "small"})["results"][0]
    got = InferenceClient(base_url=ner.url + "?size=small").token_classification(text, aggregation_strategy="simple")
    assert [(g.entity_group, g.word, g.start, g.end) for g in got] == [
        (w["entity_group"], w["word"], w["start"], w["end"]) for w in want
    ]
    assert [g.score for g in got] == pytest.approx([w["score"] for w in want], abs=1e-6)


def test_question_answering_equals_v1_answer(qa: Live) -> None:
    item = {"question": "w3 w4", "context": "w1 w2 w3 w4 w5 w6 w7"}
    want = v1(qa, "/v1/answer", {"inputs": [item], "sparsity": 0.5})["results"][0]
    got = InferenceClient(base_url=qa.url + "?sparsity=0.5").question_answering(**item)
    assert (got.answer, got.start, got.end) == (want["answer"], want["start"], want["end"])
    assert got.score == pytest.approx(want["score"], abs=1e-6)


def test_predict_lists_every_label_for_texts_pairs_and_batches(server: Live) -> None:
    labels = server.app.state.runtime.engine.labels
    one = httpx.post(server.url + "/predict", json={"inputs": TEXTS[0], "size": "small"}).json()
    want = v1(server, "/v1/classify", {"inputs": [TEXTS[0], TEXTS], "size": "small"})["results"]
    assert {s["label"] for s in one} == set(labels) and one[0]["label"] == want[0]["label"]
    pair = httpx.post(server.url + "/predict", json={"inputs": TEXTS, "size": "small"}).json()  # 2 texts: a pair
    assert pair[0]["label"] == want[1]["label"] and pair[0]["score"] == pytest.approx(want[1]["score"], abs=1e-6)
    batch = httpx.post(server.url + "/predict?size=small", json={"inputs": [TEXTS[0], TEXTS, "w6"]}).json()
    assert [b[0]["label"] for b in batch[:2]] == [w["label"] for w in want] and len(batch) == 3
    raw = httpx.post(server.url + "/predict", json={"inputs": TEXTS[0], "raw_scores": True, "size": "small"}).json()
    logits = np.array([s["score"] for s in sorted(raw, key=lambda s: labels.index(s["label"]))])
    probs = np.exp(logits) / np.exp(logits).sum()
    assert probs.max() == pytest.approx(one[0]["score"], abs=1e-6)


def test_tokenize_info_and_health(server: Live) -> None:
    tokenizer = server.app.state.runtime.engine.tokenizer
    tokens = httpx.post(server.url + "/tokenize", json={"inputs": ["w1 w2"]}).json()[0]
    assert [t["id"] for t in tokens] == tokenizer("w1 w2")["input_ids"]
    assert [(t["text"], t["start"], t["stop"]) for t in tokens if not t["special"]] == [("w1", 0, 2), ("w2", 3, 5)]
    info = httpx.get(server.url + "/info").json()
    assert info["model_id"] == server.app.state.settings.checkpoint.resolve().name
    assert info["model_type"]["classifier"]["id2label"]["0"] == server.app.state.runtime.engine.labels[0]
    assert info["model_dtype"] == "float32" and info["max_input_length"] > 0 and "small" in info["sizes"]
    assert httpx.get(server.url + "/health").status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "status", "kind", "words"),
    [
        ("/", {"inputs": "a", "parameters": {"colour": 1}}, 400, "unsupported", "parameter 'colour'"),
        ("/", {"inputs": "a", "parameters": {"top_k": 0}}, 422, "validation", "top_k"),
        ("/", {"inputs": "a", "parameters": {"size": "huge"}}, 422, "validation", "unknown size"),
        ("/", {"inputs": "a", "parameters": {"size": "small"}, "sparsity": 0.5}, 422, "validation", "at most one"),
        ("/embed", {"inputs": "a", "normalize": False}, 400, "unsupported", "normalize"),
        ("/embed", {"inputs": "a", "truncate": True}, 400, "unsupported", "truncate"),
        ("/embed?sparsity=2", {"inputs": "a"}, 422, "validation", "sparsity"),
        ("/predict", {"inputs": [""]}, 422, "validation", "text must not be empty"),
        ("/tokenize", {"inputs": ["a"] * 1000}, 422, "validation", "at most"),
    ],
)
def test_bad_requests_get_teis_error_shape(
    server: Live, path: str, body: dict[str, Any], status: int, kind: str, words: str
) -> None:
    r = httpx.post(server.url + path, json=body)
    assert r.status_code == status and r.json()["error_type"] == kind and words in r.json()["error"], r.text
    assert set(r.json()) == ERROR_KEYS


def test_predict_on_another_task_is_a_404_naming_its_endpoint(ner: Live) -> None:
    r = httpx.post(ner.url + "/predict", json={"inputs": "w1"})
    assert r.status_code == 404 and r.json()["error_type"] == "unsupported_task"
