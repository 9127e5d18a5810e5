"""The OpenAI routes with the real `openai` SDK (and LangChain's OpenAIEmbeddings) against a real uvicorn: the
vectors are /v1/embed's at the same size, for every way of choosing it; bad requests raise the SDK's
APIStatusError with our message; the API key works as the SDK's api_key."""

import base64
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from svc_live import Live, live_server

from service.settings import Settings

TEXTS = ["w1 w2 w3", "w4 w5"]


@pytest.fixture(scope="module")
def client(server: Live) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def name(server: Live) -> str:
    return str(httpx.get(server.url + "/v1/models").json()["data"][0]["id"])


def embed(server: Live, **selector: Any) -> np.ndarray:
    r = httpx.post(server.url + "/v1/embed", json={"inputs": TEXTS, **selector})
    assert r.status_code == 200, r.text
    return np.array(r.json()["embeddings"])


def test_models_lists_the_served_model_and_each_named_size(server: Live, client: openai.OpenAI, name: str) -> None:
    ids = [m.id for m in client.models.list()]
    sizes = httpx.get(server.url + "/v1/sizes").json()["sizes"]
    assert ids[0] == name == server.app.state.settings.checkpoint.resolve().name
    assert sorted(ids[1:]) == sorted(f"{name}:{s}" for s in sizes)
    assert client.models.retrieve(f"{name}:small").id == f"{name}:small"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("other-model")


@pytest.mark.parametrize(
    ("model_suffix", "extra", "selector"),
    [
        ("", {}, {}),
        (":small", {}, {"size": "small"}),
        (":0.5", {}, {"sparsity": 0.5}),
        ("", {"sparsity": 0.5}, {"sparsity": 0.5}),
        ("", {"size": "medium"}, {"size": "medium"}),
        ("", {"size": "small", "depth": 1}, {"size": "small", "depth": 1}),
    ],
)
def test_vectors_equal_v1_embed_at_the_same_size(
    server: Live, client: openai.OpenAI, name: str, model_suffix: str, extra: dict[str, Any], selector: dict[str, Any]
) -> None:
    want = embed(server, **selector)
    for fmt in ("float", openai.omit):  # left out, the SDK asks for base64 and decodes it itself
        got = client.embeddings.create(model=name + model_suffix, input=TEXTS, encoding_format=fmt, extra_body=extra)
        assert [d.index for d in got.data] == [0, 1] and got.model == name + model_suffix
        np.testing.assert_allclose(np.array([d.embedding for d in got.data]), want, atol=1e-6)
        assert got.usage.prompt_tokens == got.usage.total_tokens > 0


def test_base64_is_little_endian_float32(server: Live, name: str) -> None:
    body = {"model": f"{name}:small", "input": TEXTS, "encoding_format": "base64"}
    data = httpx.post(server.url + "/v1/embeddings", json=body).json()["data"]
    got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])
    np.testing.assert_allclose(got, embed(server, size="small"), atol=1e-6)


def test_a_string_input_and_the_sparsity_header(server: Live, client: openai.OpenAI, name: str) -> None:
    raw = client.embeddings.with_raw_response.create(model=f"{name}:0.5", input="w1 w2")
    assert raw.headers["x-sparsity"] == "0.5" and int(raw.headers["x-compute-tokens"]) == 4  # [CLS] w1 w2 [SEP]
    assert len(raw.parse().data) == 1


@pytest.mark.parametrize(
    ("kwargs", "status", "words"),
    [
        ({"input": [[1, 2, 3]]}, 400, "token-id input is not supported"),
        ({"input": [1, 2, 3]}, 400, "token-id input is not supported"),
        ({"input": ["a"], "dimensions": 8}, 400, "dimensions is not supported"),
        ({"input": [""]}, 422, "text must not be empty"),
        ({"input": []}, 422, "inputs"),
        ({"input": ["a"], "extra_body": {"sparsity": 0.99}}, 422, "outside the allowed range"),
        ({"input": ["a"], "extra_body": {"size": "huge"}}, 422, "unknown size"),
        ({"input": ["a"], "extra_body": {"colour": "red"}}, 422, "colour"),
    ],
)
def test_bad_requests_raise_the_sdks_error_with_our_message(
    client: openai.OpenAI, name: str, kwargs: dict[str, Any], status: int, words: str
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.embeddings.create(model=name, **kwargs)
    assert caught.value.status_code == status and words in caught.value.message
    error = caught.value.body
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"


def test_model_ids_that_pick_nothing_valid(client: openai.OpenAI, name: str) -> None:
    with pytest.raises(openai.NotFoundError, match="is not served here"):
        client.embeddings.create(model="gpt-4", input=["a"])
    with pytest.raises(openai.UnprocessableEntityError, match="neither a size name nor a sparsity"):
        client.embeddings.create(model=f"{name}:tiny", input=["a"])
    with pytest.raises(openai.UnprocessableEntityError, match="given twice"):
        client.embeddings.create(model=f"{name}:small", input=["a"], extra_body={"size": "dense"})
    with pytest.raises(openai.UnprocessableEntityError, match="at most one of"):
        client.embeddings.create(model=f"{name}:small", input=["a"], extra_body={"sparsity": 0.5})


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [(b"x" * (2 << 20), {"Content-Type": "application/json"}, 413), (b"input=a", {"Content-Type": "text/plain"}, 415)],
)
def test_the_body_guard_answers_in_openais_shape(
    server: Live, content: bytes, headers: dict[str, str], status: int
) -> None:
    """A body refused before parsing (too large, not JSON) is still an OpenAI error on the OpenAI routes."""
    r = httpx.post(server.url + "/v1/embeddings", content=content, headers=headers)
    assert r.status_code == status
    error = r.json()["error"]
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]


@pytest.fixture(scope="module")
def keyed(make_settings: Callable[..., Settings]) -> Iterator[Live]:
    with live_server(make_settings(api_key="s3cret", served_model_name="tiny-sst")) as live:
        yield live


def test_the_api_key_is_the_sdks_and_the_name_is_the_setting(keyed: Live) -> None:
    good = openai.OpenAI(base_url=keyed.url + "/v1", api_key="s3cret", max_retries=0)
    assert len(good.embeddings.create(model="tiny-sst:small", input=["a"]).data) == 1
    bad = openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.embeddings.create(model="tiny-sst", input=["a"])
    assert caught.value.message.endswith("- wrong API key") and caught.value.code == "unauthorized"


def test_langchain_openai_embeddings(server: Live, name: str) -> None:
    from langchain_openai import OpenAIEmbeddings

    lc = OpenAIEmbeddings(
        model=f"{name}:small",
        base_url=server.url + "/v1",
        api_key="unused",  # type: ignore[arg-type]
        check_embedding_ctx_length=False,
        max_retries=0,  # texts as they are: tiktoken cannot know our tokenizer
    )
    want = embed(server, size="small")
    np.testing.assert_allclose(np.array(lc.embed_documents(TEXTS)), want, atol=1e-6)
    np.testing.assert_allclose(np.array(lc.embed_query(TEXTS[0])), want[0], atol=1e-6)
