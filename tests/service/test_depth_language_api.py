"""Elastic depth and per-language orderings over real HTTP: a request's `depth` and `language` run as the Python
API runs them, the response says which served it, bad ones are 422 in the one error shape, requests of different
languages never mix in a batch, and GET /v1/sizes lists the model's layers, depth order and languages."""

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import torch.nn.functional as F
from svc_live import Live, live_server

import dynsparse
from service.settings import Settings

ERROR_KEYS = {"error", "error_type", "request_id"}  # every error body (request_id: X-Request-ID)

TEXTS = ["w1 w2 w3", "w4 w5 w6 w7 w8"]
LANGUAGES = ["de", "en"]


def is_error(r: httpx.Response, error_type: str = "validation") -> bool:
    body = r.json()
    return r.status_code == 422 and set(body) == ERROR_KEYS and body["error_type"] == error_type


def probs(model: dynsparse.ElasticModel, texts: list[str], **size: Any) -> torch.Tensor:
    """Softmax of the Python API's logits at `size` (sparsity, depth, language) (B, C)."""
    b = model.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], **size).logits.softmax(-1)


def embedding(model: dynsparse.ElasticModel, text: str, **size: Any) -> torch.Tensor:
    ids = model.tokenizer([text], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return F.normalize(model.encode(ids, **size).mean(1), dim=-1)[0]


def scores(body: dict[str, Any]) -> list[float]:
    return [x["score"] for x in body["results"]]


def assert_same_classes(body: dict[str, Any], model: dynsparse.ElasticModel, want: torch.Tensor) -> None:
    labels = list(model.meta.labels)
    assert [x["label"] for x in body["results"]] == [labels[i] for i in want.argmax(-1).tolist()]
    assert scores(body) == pytest.approx(want.max(-1).values.tolist(), abs=1e-5)


@pytest.fixture(scope="module")
def lang_ckpt(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_ckpt` with random orderings for "de" and "en" and a depth order that keeps layer 1 first."""
    model = dynsparse.load(str(tiny_ckpt))
    s = model.shape
    gen = torch.Generator().manual_seed(0)
    model.set_language_scores(
        LANGUAGES,
        torch.rand(2, s.layers, s.heads, generator=gen),
        torch.rand(2, s.layers, s.intermediate, generator=gen),
    )
    model.set_layer_order([1, 0], "test")
    model.meta = model.meta.with_depth(min_layers=1)
    out = tmp_path_factory.mktemp("lang") / "run"
    dynsparse.save(model, out)
    return out


@pytest.fixture(scope="module")
def lang_model(lang_ckpt: Path) -> dynsparse.ElasticModel:
    return dynsparse.load(str(lang_ckpt)).eval()


@pytest.fixture(scope="module")
def lang(make_settings: Callable[..., Settings], lang_ckpt: Path) -> Iterator[Live]:
    with live_server(make_settings(checkpoint=lang_ckpt)) as live:
        yield live


@pytest.fixture
def lang_api(lang: Live) -> Iterator[httpx.Client]:
    with lang.client() as client:
        yield client


# -- (a) depth ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [{"sparsity": 0.0}, {"sparsity": 0.5}, {"size": "small"}, {}])
def test_depth_equals_the_python_api(
    api: httpx.Client, reference: dynsparse.ElasticModel, size: dict[str, Any]
) -> None:
    r = api.post("/v1/classify", json={"inputs": TEXTS, "depth": 1, **size})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["depth"] == 1 and body["language"] is None
    want = probs(reference, TEXTS, sparsity=body["sparsity"], depth=1)
    assert_same_classes(body, reference, want)
    full = probs(reference, TEXTS, sparsity=body["sparsity"])
    assert not torch.allclose(want, full, atol=1e-4)  # one layer is a different model


def test_full_depth_is_the_default(api: httpx.Client, reference: dynsparse.ElasticModel) -> None:
    plain = api.post("/v1/classify", json={"inputs": TEXTS, "sparsity": 0.3}).json()
    full = api.post("/v1/classify", json={"inputs": TEXTS, "sparsity": 0.3, "depth": 2}).json()
    assert plain["depth"] == full["depth"] == reference.shape.layers == 2
    assert scores(plain) == scores(full)


def test_embed_at_a_depth(api: httpx.Client, reference: dynsparse.ElasticModel) -> None:
    r = api.post("/v1/embed", json={"inputs": ["w1 w2 w3"], "sparsity": 0.5, "depth": 1})
    assert r.status_code == 200, r.text
    assert r.json()["depth"] == 1
    want = embedding(reference, "w1 w2 w3", sparsity=0.5, depth=1)
    assert torch.tensor(r.json()["embeddings"][0]) == pytest.approx(want, abs=1e-5)


def test_a_depth_over_the_layers_is_422_with_the_models_message(api: httpx.Client) -> None:
    r = api.post("/v1/classify", json={"inputs": TEXTS, "depth": 3})
    assert is_error(r), r.text
    assert r.json()["error"] == "depth must be a whole number of layers from 1 to 2, got 3"


def test_depth_with_a_latency_budget_is_422(api: httpx.Client) -> None:
    r = api.post("/v1/classify", json={"inputs": TEXTS, "depth": 1, "latency_budget_ms": 50})
    assert is_error(r), r.text
    assert "depth cannot be combined with latency_budget_ms" in r.json()["error"]
    assert "full depth" in r.json()["error"]


@pytest.mark.parametrize("depth", [0, -1, 1.0, "1", True, None, 5000])
def test_malformed_depths_are_422(api: httpx.Client, depth: Any) -> None:
    body = {"inputs": TEXTS, "depth": depth}
    r = api.post("/v1/classify", json=body)
    if depth is None:  # null: every layer
        assert r.status_code == 200 and r.json()["depth"] == 2
    else:
        assert is_error(r), r.text


# -- (b) per-language orderings -------------------------------------------------------------------------------
def test_a_language_runs_its_own_ordering(lang_api: httpx.Client, lang_model: dynsparse.ElasticModel) -> None:
    de = lang_api.post("/v1/classify", json={"inputs": TEXTS, "sparsity": 0.5, "language": "de"})
    en = lang_api.post("/v1/classify", json={"inputs": TEXTS, "sparsity": 0.5, "language": "en"})
    assert de.status_code == en.status_code == 200, de.text + en.text
    assert de.json()["language"] == "de" and en.json()["language"] == "en" and de.json()["depth"] == 2
    want_de = probs(lang_model, TEXTS, sparsity=0.5, language="de")
    want_en = probs(lang_model, TEXTS, sparsity=0.5, language="en")
    assert not torch.allclose(want_de, want_en, atol=1e-4)  # random orderings keep different units
    assert_same_classes(de.json(), lang_model, want_de)
    assert_same_classes(en.json(), lang_model, want_en)
    assert scores(de.json()) != pytest.approx(scores(en.json()), abs=1e-5)


def test_a_language_with_a_depth_and_embeddings(lang_api: httpx.Client, lang_model: dynsparse.ElasticModel) -> None:
    r = lang_api.post("/v1/embed", json={"inputs": ["w1 w2 w3"], "sparsity": 0.5, "depth": 1, "language": "en"})
    assert r.status_code == 200, r.text
    assert (r.json()["depth"], r.json()["language"]) == (1, "en")
    want = embedding(lang_model, "w1 w2 w3", sparsity=0.5, depth=1, language="en")
    assert torch.tensor(r.json()["embeddings"][0]) == pytest.approx(want, abs=1e-5)


def test_no_language_is_the_shared_ordering(lang_api: httpx.Client, lang_model: dynsparse.ElasticModel) -> None:
    body = lang_api.post("/v1/classify", json={"inputs": TEXTS, "sparsity": 0.5}).json()
    assert body["language"] is None
    assert_same_classes(body, lang_model, probs(lang_model, TEXTS, sparsity=0.5))


def test_an_unknown_language_is_422_naming_the_languages(lang_api: httpx.Client) -> None:
    r = lang_api.post("/v1/classify", json={"inputs": TEXTS, "language": "fr"})
    assert is_error(r), r.text
    assert r.json()["error"] == "no ordering for language 'fr'; this checkpoint's languages: de, en"


@pytest.mark.parametrize("language", ["", "x" * 65, 7, ["de"]])
def test_malformed_languages_are_422(lang_api: httpx.Client, language: Any) -> None:
    assert is_error(lang_api.post("/v1/classify", json={"inputs": TEXTS, "language": language}))


def test_languages_never_share_a_batch(lang: Live, lang_model: dynsparse.ElasticModel) -> None:
    """A burst of requests in every language and none: each answers as its own ordering does alone."""
    langs: list[str | None] = ["de", "en", None] * 3

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=lang.url, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post("/v1/classify", json={"inputs": [TEXTS[i % 2]], "sparsity": 0.5, "language": x})
                    for i, x in enumerate(langs)
                )
            )

    for i, (x, r) in enumerate(zip(langs, asyncio.run(burst()), strict=True)):
        assert r.status_code == 200 and r.json()["language"] == x, r.text
        assert_same_classes(r.json(), lang_model, probs(lang_model, [TEXTS[i % 2]], sparsity=0.5, language=x))


# -- (c) a checkpoint without per-language orderings ------------------------------------------------------------
@pytest.mark.parametrize("endpoint", ["/v1/classify", "/v1/embed"])
def test_any_language_is_served_by_the_shared_ordering(
    api: httpx.Client, reference: dynsparse.ElasticModel, endpoint: str
) -> None:
    with_fr = api.post(endpoint, json={"inputs": TEXTS, "sparsity": 0.5, "language": "fr"})
    without = api.post(endpoint, json={"inputs": TEXTS, "sparsity": 0.5})
    assert with_fr.status_code == 200, with_fr.text
    assert with_fr.json()["language"] is None and with_fr.json()["depth"] == 2
    key = "results" if endpoint == "/v1/classify" else "embeddings"
    assert with_fr.json()[key] == without.json()[key]
    if endpoint == "/v1/classify":
        assert_same_classes(with_fr.json(), reference, probs(reference, TEXTS, sparsity=0.5))


# -- (d) the sizes table ----------------------------------------------------------------------------------------
def test_sizes_list_layers_depth_and_languages(
    api: httpx.Client, lang_api: httpx.Client, reference: dynsparse.ElasticModel
) -> None:
    shared = api.get("/v1/sizes").json()
    assert shared["layers"] == 2 and shared["languages"] == []
    assert shared["depth"] == (reference.meta.depth.to_json() if reference.meta.depth else None)
    body = lang_api.get("/v1/sizes").json()
    assert body["layers"] == 2 and body["languages"] == LANGUAGES
    assert body["depth"] == {"order": [1, 0], "rule": "test", "min_layers": 1}


def test_the_schema_documents_depth_and_language(api: httpx.Client) -> None:
    spec = api.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    request = next(v for k, v in schemas.items() if k.startswith("ClassifyRequest"))
    assert {"depth", "language"} <= set(request["properties"])
    assert {"depth", "language"} <= set(schemas["ClassifyResponse"]["required"])
    assert {"layers", "depth", "languages"} <= set(schemas["SizesResponse"]["properties"])
