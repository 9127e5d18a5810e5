"""One size taken elsewhere: a transformers directory (stock where a stock config says the size), the same directory
as a sentence-transformers model for embeddings, and an ONNX directory optimum's ORTModelFor<Task> loads; each gives
the checkpoint's outputs at that size on a padded batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import dynsparse
from dynsparse.export import EXPORT_META, export
from dynsparse.tasks import task_spec

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12", "w13 w14", "w15 w16 w17 w18 w19"]
TASK_CKPTS = ("tiny_ckpt", "ner_ckpt", "qa_ckpt", "embed_ckpt")
# The tiny models have 4 heads and 64 neurons a layer: at 0.1 every head stays (58 neurons, stock); at 0.5 not.
SIZES = {0.1: True, 0.5: False}


def reference(
    model: dynsparse.ElasticModel, batch: dict[str, torch.Tensor], sparsity: float
) -> dict[str, torch.Tensor]:
    """The Python API at `sparsity`, under transformers' output names."""
    with torch.no_grad():
        out = model(**batch, sparsity=sparsity)
    if model.task == "question-answering":
        return {"start_logits": out.logits[..., 0], "end_logits": out.logits[..., 1]}
    if model.task == "feature-extraction":
        return {"last_hidden_state": out.last_hidden_state}
    return {"logits": out.logits}


def embed_vectors(model: dynsparse.ElasticModel, texts: list[str], sparsity: float) -> torch.Tensor:
    """What /v1/embed returns: the service's own codec on the engine's hidden states."""
    from service.codec import TextCodec

    batch = dict(model.tokenizer(texts, padding=True, return_tensors="pt"))
    with torch.no_grad():
        hidden = model(**batch, sparsity=sparsity).last_hidden_state
    return torch.tensor(TextCodec(model.tokenizer, 512, pooled=True).reduce(hidden, batch["attention_mask"]))


@pytest.mark.parametrize("sparsity", SIZES)
@pytest.mark.parametrize("ckpt", TASK_CKPTS)
def test_transformers_export_matches(
    request: pytest.FixtureRequest, tmp_path: Path, ckpt: str, sparsity: float
) -> None:
    model = dynsparse.load(str(request.getfixturevalue(ckpt)))
    batch = dict(model.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    export(model, sparsity, tmp_path, "transformers")
    stock = json.loads((tmp_path / EXPORT_META).read_text())["stock"]
    assert stock == SIZES[sparsity]
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["model_type"] == "bert") == stock and ("auto_map" in config) != stock
    hf = (
        getattr(transformers, task_spec(model.task).auto_class)
        .from_pretrained(tmp_path, trust_remote_code=not stock)
        .eval()
    )
    assert type(hf).__name__.startswith("Bert" if stock else "Dynsparse")
    if model.task != "feature-extraction":  # a stock BertModel adds its (unused, newly initialised) pooler
        assert sum(p.numel() for p in hf.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        out = hf(**batch)
    for name, value in reference(model, batch, sparsity).items():
        torch.testing.assert_close(getattr(out, name), value, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    if stock:
        assert config["intermediate_size"] == model.structure(sparsity)[0][1]


@pytest.mark.parametrize("sparsity", SIZES)
def test_sentence_transformers_gives_the_embed_vectors(embed_ckpt: Path, tmp_path: Path, sparsity: float) -> None:
    SentenceTransformer = pytest.importorskip("sentence_transformers").SentenceTransformer
    model = dynsparse.load(str(embed_ckpt))
    export(model, sparsity, tmp_path, "transformers")
    st = SentenceTransformer(str(tmp_path), device="cpu", trust_remote_code=not SIZES[sparsity])
    got = torch.from_numpy(st.encode(TEXTS, batch_size=len(TEXTS)))
    torch.testing.assert_close(got, embed_vectors(model, TEXTS, sparsity), atol=1e-4, rtol=1e-4)
    single = torch.from_numpy(st.encode(TEXTS[1:2]))  # alone (no padding) it is the same vector
    torch.testing.assert_close(single[0], got[1], atol=1e-5, rtol=1e-5)


def test_depth_export_is_stock_with_fewer_layers(tiny_ckpt: Path, tmp_path: Path) -> None:
    model = dynsparse.load(str(tiny_ckpt))
    export(model, 0.1, tmp_path, "transformers", depth=1)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert hf.config.num_hidden_layers == 1
    batch = dict(model.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    with torch.no_grad():
        expected = model(**batch, sparsity=0.1, depth=1).logits
        torch.testing.assert_close(hf(**batch).logits, expected, atol=1e-4, rtol=1e-4)


def test_cli_writes_a_transformers_directory(tiny_ckpt: Path, tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dynsparse.cli",
            "export",
            str(tiny_ckpt),
            "--sparsity",
            "0.5",
            "--format",
            "transformers",
            "--output",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert {"model.safetensors", "config.json", "modeling_dynsparse.py", "tokenizer.json", EXPORT_META} <= {
        p.name for p in (tmp_path / "out").iterdir()
    }


def test_onnx_export_has_a_config_beside_it(tiny_ckpt: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    model = dynsparse.load(str(tiny_ckpt))
    export(model, 0.5, tmp_path, "onnx")
    config = transformers.AutoConfig.from_pretrained(tmp_path)  # a stock type: no remote code in an ONNX dir
    assert config.model_type == "bert" and config.num_hidden_layers == 2
    assert config.dynsparse_structure == [list(hn) for hn in model.structure(0.5)]
    assert config.id2label == dict(enumerate(model.meta.labels))


# -- optimum (its own interpreter: optimum-onnx needs transformers < 4.58; .ci/run builds it) ---------------------
OPTIMUM = os.environ.get("DYNSPARSE_OPTIMUM_PYTHON")


@pytest.mark.skipif(not OPTIMUM, reason="set DYNSPARSE_OPTIMUM_PYTHON to a python with optimum-onnx[onnxruntime]")
@pytest.mark.parametrize("sparsity", SIZES)
@pytest.mark.parametrize("ckpt", TASK_CKPTS)
def test_optimum_loads_the_onnx_export(
    request: pytest.FixtureRequest, tmp_path: Path, ckpt: str, sparsity: float
) -> None:
    pytest.importorskip("onnxscript")
    assert OPTIMUM is not None
    model = dynsparse.load(str(request.getfixturevalue(ckpt)))
    export(model, sparsity, tmp_path, "onnx")
    probe = Path(__file__).with_name("optimum_probe.py")
    r = subprocess.run(
        [OPTIMUM, str(probe), str(tmp_path), model.task, json.dumps(TEXTS)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["class"].startswith("ORTModelFor")
    batch = dict(model.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    for name, value in reference(model, batch, sparsity).items():
        torch.testing.assert_close(torch.tensor(got[name]), value, atol=1e-4, rtol=1e-4)
