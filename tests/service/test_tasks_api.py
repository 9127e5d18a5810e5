"""The task endpoints on real servers: /v1/tokens (token classification), /v1/answer (question answering) and
/v1/embed (a sentence-embedding checkpoint), each serving a tiny checkpoint trained this session through the real
recipe. Answers equal the Python API's at the requested sparsity; offsets point at the right characters; an
endpoint of another task is a documented 404; bad bodies are 422."""

import asyncio
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import torch.nn.functional as F
from svc_live import Live, live_server

import dynsparse
from dynsparse.tasks.qa import best_span, encode_windows, span_probability
from service.settings import Settings

ERROR_KEYS = {"error", "error_type", "request_id"}  # every error body (request_id: X-Request-ID)

SIZES = [0.0, 0.5, 0.9]


def is_error(r: httpx.Response, status: int, error_type: str) -> bool:
    body = r.json()
    return r.status_code == status and set(body) == ERROR_KEYS and body["error_type"] == error_type


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


def post(live: Live, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(live.url + path, json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


# -- /v1/tokens -----------------------------------------------------------------------------------------------
def word_tags(model: dynsparse.ElasticModel, words: list[str], s: float) -> list[tuple[str, float]]:
    """The Python API's tag and probability per word (its first sub-word's), at sparsity `s`."""
    enc = model.tokenizer([words], is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], sparsity=s).logits.softmax(-1)
    firsts = {w: t for t, w in reversed(list(enumerate(enc.word_ids(0)))) if w is not None}
    labels = list(model.meta.labels)
    return [(labels[int(probs[0, firsts[w]].argmax())], float(probs[0, firsts[w]].max())) for w in range(len(words))]


def bio_runs(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of each B-/I- run: B- opens, I- of the same type extends, O closes."""
    runs: list[list[Any]] = []
    for i, tag in enumerate(tags):
        if tag.startswith("I-") and runs and runs[-1][2] == i - 1 and runs[-1][0] == tag[2:]:
            runs[-1][2] = i
        elif tag != "O":
            runs.append([tag[2:], i, i])
    return [(t, a, b) for t, a, b in runs]


@pytest.mark.parametrize("s", SIZES)
def test_tokens_equal_the_python_api(ner: Live, ner_ckpt: Path, s: float) -> None:
    model = dynsparse.load(str(ner_ckpt)).eval()
    text = "w2 w4  w7 w8 w10 w12 w3 w6"
    words = ["w1", "w6", "w8", "w9", "w20"]
    body = post(ner, "/v1/tokens", {"inputs": [text, words], "sparsity": s})
    assert body["sparsity"] == s and body["latency_ms"] >= body["inference_ms"] > 0
    for got, given, joined in ((body["results"][0], text.split(), text), (body["results"][1], words, " ".join(words))):
        tagged = word_tags(model, given, s)
        starts, at = [], 0
        for w in given:
            starts.append(at := joined.index(w, at))
            at += len(w)
        want = []
        for kind, a, b in bio_runs([t for t, _ in tagged]):
            start, end = starts[a], starts[b] + len(given[b])
            want.append((kind, joined[start:end], start, end, sum(p for _, p in tagged[a : b + 1]) / (b - a + 1)))
        assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in got] == [w[:4] for w in want]
        assert [e["score"] for e in got] == pytest.approx([w[4] for w in want], abs=1e-5)


def test_tokens_learnt_the_entities_and_offsets_point_at_them(ner: Live) -> None:
    """The trained tagger marks runs of even-numbered words; every offset slices out its entity."""
    text = "w1 w2 w4,  w5 w8 w9 w10 w12 w14 w3"
    (found,) = post(ner, "/v1/tokens", {"inputs": [text]})["results"]
    assert found and all(text[e["start"] : e["end"]] == e["word"] for e in found)
    words = [re.findall(r"w\d+", e["word"]) for e in found]  # "," is unknown to the tiny vocabulary: any tag
    assert all(e["entity_group"] == "EVEN" for e in found) and all(int(w[1:]) % 2 == 0 for ws in words for w in ws)
    assert sum(map(len, words)) >= 4  # of the 6 even words


def test_non_bio_tags_give_one_item_per_word(ner: Live, ner_ckpt: Path) -> None:
    """A tag set without B-/I- (POS) lists every word with its tag: the engine's codec, switched to such labels."""
    from service.codec import TokensCodec

    engine = ner.app.state.runtime.engine
    pos = TokensCodec(engine.tokenizer, engine.max_tokens, ["ADJ", "NOUN", "VERB"])
    (enc,) = pos.encode(["w1 w2, w3"])
    found = pos.decode(enc, [([0, 1, 1, 2, 0, 0], [0.0, 0.9, 0.8, 0.7, 0.6, 0.0])])  # [CLS] w1 w2 , w3 [SEP]
    assert [(e.label, e.word, e.start, e.end) for e in found] == [
        ("NOUN", "w1", 0, 2),
        ("NOUN", "w2", 3, 5),
        ("VERB", ",", 5, 6),
        ("ADJ", "w3", 7, 9),
    ]


# -- /v1/answer -------------------------------------------------------------------------------------------------
def expected_answer(model: dynsparse.ElasticModel, question: str, context: str, s: float) -> dict[str, Any]:
    """The Python API's answer: the training code's windows (24 tokens) and span search at sparsity `s`."""
    w = encode_windows(model.tokenizer, [question], [context], 24)
    b = model.tokenizer.pad(dict(w.encoding.items()), return_tensors="pt")  # as training feeds the windows
    with torch.no_grad():
        out = model(**b, sparsity=s).logits.numpy()
    logits = [out[i, : len(w.offsets[i])] for i in range(len(w.offsets))]
    span = best_span(logits, w.offsets)
    assert span is not None
    score = span_probability(logits[span.window], w.offsets[span.window], span.tokens)
    return {"answer": context[span.start : span.end], "start": span.start, "end": span.end, "score": score}


CONTEXTS = [
    " ".join(f"w{i}" for i in [3, 17, 44, 5, 61, 92, 8, 30, 71, 12, 55, 2, 67, 40, 21, 80, 9, 33, 48, 59, 26, 14]),
    "w5 w7 w97 w11",
    " ".join(f"w{i}" for i in [*range(10, 40), 95, *range(40, 50)]),  # the answer past the first window
]


@pytest.mark.parametrize("s", SIZES)
def test_answers_equal_the_python_api(qa: Live, qa_ckpt: Path, s: float) -> None:
    model = dynsparse.load(str(qa_ckpt)).eval()
    inputs = [{"question": "w1 w2", "context": c} for c in CONTEXTS]
    body = post(qa, "/v1/answer", {"inputs": inputs, "sparsity": s})
    assert body["sparsity"] == s
    for got, c in zip(body["results"], CONTEXTS, strict=True):
        want = expected_answer(model, "w1 w2", c, s)
        assert {k: got[k] for k in ("answer", "start", "end")} == {k: want[k] for k in ("answer", "start", "end")}
        assert got["score"] == pytest.approx(want["score"], abs=1e-5) and 0 < got["score"] <= 1
        assert c[got["start"] : got["end"]] == got["answer"]


def test_answers_are_found_across_windows(qa: Live) -> None:
    """The trained reader finds the one word w90..w99 (its gold answer), also in a later window."""
    body = post(qa, "/v1/answer", {"inputs": [{"question": "w1 w2", "context": c} for c in CONTEXTS]})
    assert [r["answer"] for r in body["results"]] == ["w92", "w97", "w95"]
    third = body["results"][2]
    assert CONTEXTS[2][third["start"] : third["end"]] == "w95" and third["start"] > 100


# -- /v1/embed on a sentence-embedding checkpoint ---------------------------------------------------------------
def test_embed_is_the_main_endpoint_of_an_embedding_checkpoint(emb: Live, embed_ckpt: Path) -> None:
    model = dynsparse.load(str(embed_ckpt)).eval()
    texts = ["w1 w2 w3", "w51 w52"]
    body = post(emb, "/v1/embed", {"inputs": texts, "sparsity": 0.5})
    b = model.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():  # the checkpoint's head is the mean pool itself
        want = F.normalize(model(**b, sparsity=0.5).logits, dim=-1)
    assert torch.tensor(body["embeddings"]) == pytest.approx(want, abs=1e-5)
    sizes = httpx.get(emb.url + "/v1/sizes").json()
    assert (sizes["task"], sizes["endpoint"], sizes["endpoints"]) == ("feature-extraction", "/v1/embed", ["/v1/embed"])
    assert sizes["metric"] == "accuracy_at_1"


# -- every server: its endpoints, the others' 404, bad bodies ---------------------------------------------------
def test_sizes_name_the_task_and_its_endpoint(ner: Live, qa: Live, server: Live) -> None:
    for live, task, endpoint, metric in (
        (ner, "token-classification", "/v1/tokens", "f1"),
        (qa, "question-answering", "/v1/answer", "f1"),
        (server, "text-classification", "/v1/classify", "accuracy"),
    ):
        sizes = httpx.get(live.url + "/v1/sizes").json()
        assert (sizes["task"], sizes["endpoint"], sizes["endpoints"]) == (task, endpoint, [endpoint, "/v1/embed"])
        assert sizes["metric"] == metric and all(metric in row for row in sizes["levels"])


WRONG = [
    ("ner", "/v1/classify", {"inputs": ["w1"]}, "token-classification", "/v1/tokens"),
    ("ner", "/v1/answer", {"inputs": [{"question": "w1", "context": "w2"}]}, "token-classification", "/v1/tokens"),
    ("qa", "/v1/tokens", {"inputs": ["w1"]}, "question-answering", "/v1/answer"),
    ("emb", "/v1/classify", {"inputs": ["w1"]}, "feature-extraction", "/v1/embed"),
    ("emb", "/v1/tokens", {"inputs": ["w1"], "sparsity": 0.5}, "feature-extraction", "/v1/embed"),
    ("server", "/v1/tokens", {"inputs": [["w1", "w2"]]}, "text-classification", "/v1/classify"),
    ("server", "/v1/answer", {"inputs": [{"question": "w1", "context": "w2"}]}, "text-classification", "/v1/classify"),
    ("server", "/v1/answer", {"inputs": "not even valid"}, "text-classification", "/v1/classify"),
]


@pytest.mark.parametrize("name,path,body,task,endpoint", WRONG)
def test_an_endpoint_of_another_task_is_a_documented_404(
    request: pytest.FixtureRequest, name: str, path: str, body: dict[str, Any], task: str, endpoint: str
) -> None:
    live: Live = request.getfixturevalue(name)
    r = httpx.post(live.url + path, json=body, timeout=30)
    assert is_error(r, 404, "unsupported_task"), r.text
    assert r.json()["error"] == f"this checkpoint is a {task} model: use {endpoint}"
    assert live.metric("dynsparse_errors_total", endpoint=path, error_type="unsupported_task") >= 1
    operation = httpx.get(live.url + "/openapi.json").json()["paths"][path]["post"]
    assert operation["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")


LONG = " ".join(f"w{i % 90}" for i in range(300))  # over the tiny model's 126 tokens


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": []},
        {"inputs": [[]]},
        {"inputs": [["w1", ""]]},
        {"inputs": [["w1", 3]]},
        {"inputs": [5]},
        {"inputs": ["   "]},
        {"inputs": [{"text": "w1"}]},
        {"inputs": ["w1"], "sparsity": 0.95},
        {"inputs": ["w1"], "size": "small", "sparsity": 0.5},
        {"inputs": [LONG]},
        {"inputs": [LONG.split()]},
        {"inputs": ["w1"] * 65},
        {"words": ["w1"]},
    ],
)
def test_bad_token_bodies_are_422(ner: Live, body: dict[str, Any]) -> None:
    r = httpx.post(ner.url + "/v1/tokens", json=body, timeout=30)
    assert is_error(r, 422, "validation"), r.text


MANY_WINDOWS = " ".join(f"w{i % 90}" for i in range(1000))  # about 80 windows of 24 tokens: over max_inputs 64


@pytest.mark.parametrize(
    "body,message",
    [
        ({"inputs": []}, "at least 1 item"),
        ({"inputs": ["w1 w2"]}, 'an input is {"question": "...", "context": "..."}, got str'),
        ({"inputs": [{"question": "w1"}]}, "context missing"),
        ({"inputs": [{"question": "w1", "context": "w2", "extra": 1}]}, "unknown key 'extra'"),
        ({"inputs": [{"question": " ", "context": "w2"}]}, "text must not be empty"),
        ({"inputs": [{"question": "w1", "context": 7}]}, "context is a text, got int"),
        ({"inputs": [{"question": " ".join(["w1"] * 12), "context": "w2"}]}, "question of 12 tokens; at most 9"),
        ({"inputs": [{"question": "w1", "context": MANY_WINDOWS}]}, "windows of 24 tokens; at most 64 per request"),
        ({"inputs": [{"question": "w1", "context": "w2"}], "latency_budget_ms": -1}, "latency_budget_ms"),
    ],
)
def test_bad_answer_bodies_are_422(qa: Live, body: dict[str, Any], message: str) -> None:
    r = httpx.post(qa.url + "/v1/answer", json=body, timeout=30)
    assert is_error(r, 422, "validation"), r.text
    assert message in r.json()["error"]


# -- the same batching, limits and key as classify --------------------------------------------------------------
def test_concurrent_requests_of_mixed_sizes_answer_as_alone(ner: Live) -> None:
    texts = [f"w{i % 40} w{(i * 7) % 40} w{(i * 3) % 40}" for i in range(24)]
    bodies = [{"inputs": [t], "sparsity": SIZES[i % 3]} for i, t in enumerate(texts)]
    alone = [post(ner, "/v1/tokens", b)["results"][0] for b in bodies]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=ner.url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/tokens", json=b) for b in bodies))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * len(texts)
    for r, want in zip(responses, alone, strict=True):
        (got,) = r.json()["results"]
        assert [{k: e[k] for k in ("entity_group", "word", "start", "end")} for e in got] == [
            {k: e[k] for k in ("entity_group", "word", "start", "end")} for e in want
        ]
        assert [e["score"] for e in got] == pytest.approx([e["score"] for e in want], abs=1e-6)


def test_key_limits_and_sizes_apply_to_the_task_endpoints(
    make_settings: Callable[..., Settings], qa_ckpt: Path
) -> None:
    settings = make_settings(checkpoint=qa_ckpt, api_key="k3y", max_inputs=2, sizes={"fast": 0.8})
    one = {"question": "w1 w2", "context": "w5 w7 w97 w11"}
    with live_server(settings) as live, live.client() as c:
        assert is_error(c.post("/v1/answer", json={"inputs": [one]}), 401, "unauthorized")
        key = {"Authorization": "Bearer k3y"}
        assert is_error(c.post("/v1/answer", json={"inputs": [one] * 3}, headers=key), 422, "validation")
        r = c.post("/v1/answer", json={"inputs": [one], "size": "fast"}, headers=key)
        assert r.status_code == 200 and r.json()["sparsity"] == 0.8 and r.json()["size"] == "fast"
        assert r.headers["x-sparsity"] == "0.8"
        assert is_error(c.post("/v1/classify", json={"inputs": ["w1"]}, headers=key), 404, "unsupported_task")
        assert is_error(c.post("/v1/classify", json={"inputs": ["w1"]}), 401, "unauthorized")  # the key comes first
