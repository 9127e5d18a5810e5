"""KServe's Open Inference Protocol v2 with the real `tritonclient.http` (binary tensors, its default, and JSON)
against real uvicorn servers: labels, scores, embeddings, entities and answers equal the /v1 endpoints' at the
same size, picked in the request's parameters or the model name; bad requests raise the client's exception
with our message."""

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from svc_live import Live, live_server
from tritonclient.utils import InferenceServerException

from service.settings import Settings

TEXTS = ["w1 w2 w3", "w4 w5"]


@pytest.fixture(scope="module")
def ner(make_settings: Callable[..., Settings], ner_ckpt: Path) -> Iterator[Live]:
    with live_server(make_settings(checkpoint=ner_ckpt, served_model_name="ner")) as live:
        yield live


@pytest.fixture(scope="module")
def qa(make_settings: Callable[..., Settings], qa_ckpt: Path) -> Iterator[Live]:
    with live_server(make_settings(checkpoint=qa_ckpt, served_model_name="qa")) as live:
        yield live


def client(live: Live) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=live.url.removeprefix("http://"))


def name_of(live: Live) -> str:
    return str(httpx.get(live.url + "/info").json()["model_id"])


def tensor(name: str, values: list[str], binary: bool = True) -> triton.InferInput:
    t = triton.InferInput(name, [len(values)], "BYTES")
    t.set_data_from_numpy(np.array(values, dtype=object), binary_data=binary)
    return t


def text(x: bytes | str) -> str:
    """A BYTES element as the client returns it: bytes from binary tensors, str from JSON ones (as from Triton)."""
    return x.decode() if isinstance(x, bytes) else x


def v1(live: Live, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(live.url + path, json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_health_and_metadata(server: Live) -> None:
    c, name = client(server), name_of(server)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(name)
    assert c.get_server_metadata()["name"] == "dynsparse"
    meta = c.get_model_metadata(name)
    assert [i["name"] for i in meta["inputs"]] == ["text", "text_pair"]
    assert {o["name"] for o in meta["outputs"]} >= {"label", "score", "probabilities", "embedding"}
    assert not c.is_model_ready("other")


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize(
    ("suffix", "params", "selector"),
    [
        ("", None, {}),
        ("", {"size": "small"}, {"size": "small"}),
        (":0.5", None, {"sparsity": 0.5}),
        ("", {"sparsity": 0.9, "depth": 1}, {"sparsity": 0.9, "depth": 1}),
    ],
)
def test_classification_equals_v1_classify(
    server: Live, binary: bool, suffix: str, params: dict[str, Any] | None, selector: dict[str, Any]
) -> None:
    pairs = [TEXTS[0], [TEXTS[0], TEXTS[1]]]
    want = v1(server, "/v1/classify", {"inputs": [TEXTS[0], TEXTS[1]], **selector})["results"]
    outputs = None if binary else [triton.InferRequestedOutput(n, binary_data=False) for n in ("label", "score")]
    got = client(server).infer(
        name_of(server) + suffix, [tensor("text", TEXTS, binary)], outputs=outputs, parameters=params
    )
    assert [text(x) for x in got.as_numpy("label")] == [w["label"] for w in want]
    np.testing.assert_allclose(got.as_numpy("score"), [w["score"] for w in want], atol=1e-6)
    sizes = server.app.state.runtime.sizes.sizes
    served = got.get_response()["parameters"]["sparsity"]
    assert served == selector.get("sparsity", sizes.get(selector.get("size"), 0.0))
    want_pair = v1(server, "/v1/classify", {"inputs": [pairs[1]], **selector})["results"][0]
    pair = client(server).infer(
        name_of(server) + suffix, [tensor("text", [TEXTS[0]]), tensor("text_pair", [TEXTS[1]])], parameters=params
    )
    assert pair.as_numpy("label")[0].decode() == want_pair["label"]
    assert pair.as_numpy("probabilities").shape == (1, len(server.app.state.runtime.engine.labels))


def test_embedding_equals_v1_embed(server: Live) -> None:
    want = np.array(v1(server, "/v1/embed", {"inputs": TEXTS, "size": "small"})["embeddings"])
    outputs = [triton.InferRequestedOutput("embedding")]
    got = client(server).infer(name_of(server), [tensor("text", TEXTS)], outputs=outputs, parameters={"size": "small"})
    np.testing.assert_allclose(got.as_numpy("embedding"), want, atol=1e-6)


def test_entities_and_answers_equal_v1(ner: Live, qa: Live) -> None:
    text = "w2 w4  w7 w8 w10 w12 w3 w6"
    want = v1(ner, "/v1/tokens", {"inputs": [text], "sparsity": 0.5})["results"][0]
    got = client(ner).infer("ner:0.5", [tensor("text", [text])])
    assert json.loads(got.as_numpy("entities")[0]) == want
    item = {"question": "w3 w4", "context": "w1 w2 w3 w4 w5 w6 w7"}
    want_a = v1(qa, "/v1/answer", {"inputs": [item], "size": "small"})["results"][0]
    got_a = client(qa).infer(
        "qa", [tensor("text", [item["question"]]), tensor("text_pair", [item["context"]])], parameters={"size": "small"}
    )
    assert got_a.as_numpy("answer")[0].decode() == want_a["answer"]
    assert (int(got_a.as_numpy("start")[0]), int(got_a.as_numpy("end")[0])) == (want_a["start"], want_a["end"])
    np.testing.assert_allclose(got_a.as_numpy("score"), [want_a["score"]], atol=1e-6)


@pytest.mark.parametrize(
    ("inputs", "params", "model", "words"),
    [
        ([("text", [""])], None, "", "text must not be empty"),
        ([("words", ["a"])], None, "", "input 'words'"),
        ([("text", ["a"])], {"size": "huge"}, "", "unknown size"),
        ([("text", ["a"])], {"colour": "red"}, "", "parameter 'colour'"),
        ([("text", ["a"])], None, ":tiny", "neither a size name nor a sparsity"),
        ([("text", ["a"])], None, "x", "is not served here"),
        ([("text", ["a", "b"]), ("text_pair", ["c"])], None, "", "must match"),
    ],
)
def test_bad_requests_raise_the_clients_exception_with_our_message(
    server: Live, inputs: list[tuple[str, list[str]]], params: dict[str, Any] | None, model: str, words: str
) -> None:
    name = "other" if model == "x" else name_of(server) + model
    with pytest.raises(InferenceServerException) as caught:
        client(server).infer(name, [tensor(n, v) for n, v in inputs], parameters=params)
    assert words in caught.value.message()


def test_errors_are_the_protocols_shape(server: Live) -> None:
    r = httpx.post(f"{server.url}/v2/models/{name_of(server)}/infer", json={"inputs": []})
    assert r.status_code == 422 and isinstance(r.json()["error"], str)
    r = httpx.post(f"{server.url}/v2/models/{name_of(server)}/infer", content=b"{", headers={_h(): "9"})
    assert r.status_code == 422 and "does not fit the body" in r.json()["error"]


def _h() -> str:
    return "Inference-Header-Content-Length"
