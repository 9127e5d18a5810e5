"""Exports are standalone: really smaller weights, the checkpoint's logits at their size, loadable without dynsparse."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import dynsparse
from dynsparse.cost import level_costs
from dynsparse.errors import InputError
from dynsparse.export import EXPORT_META, export, fixed_size

ROOT = Path(__file__).resolve().parents[2]
LEVELS = (0.0, 0.5, 0.9)
# Another batch size and length than the (2, 8) trace/export example, with padding in two rows.
TEXTS = ["w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12", "w13 w14", "w15 w16 w17 w18 w19"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynsparse.cli", "export", *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )


@pytest.fixture(scope="module")
def model(tiny_ckpt: Path) -> dynsparse.ElasticModel:
    return dynsparse.load(str(tiny_ckpt))


@pytest.fixture(scope="module")
def batch(model: dynsparse.ElasticModel) -> dict[str, torch.Tensor]:
    enc = dict(model.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    assert enc["input_ids"].shape[1] != 8 and not enc["attention_mask"].all()
    return enc


def reference(model: dynsparse.ElasticModel, batch: dict[str, torch.Tensor], sparsity: float) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch, sparsity=sparsity).logits


@pytest.fixture(scope="module")
def onnx_exports(model: dynsparse.ElasticModel, tmp_path_factory: pytest.TempPathFactory) -> dict[float, Path]:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    root = tmp_path_factory.mktemp("onnx")
    return {s: export(model, s, root / f"s{s}", "onnx").parent for s in LEVELS}


def run_onnx(path: Path, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: batch[i.name].numpy() for i in session.get_inputs()}
    return torch.from_numpy(session.run(["logits"], feed)[0]), session


# -- fixed_size ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", LEVELS)
def test_fixed_size_matches_and_leaves_model_untouched(
    model: dynsparse.ElasticModel, batch: dict[str, torch.Tensor], sparsity: float
) -> None:
    before = {n: (p.data_ptr(), p.detach().clone()) for n, p in model.named_parameters()}
    expected = reference(model, batch, sparsity)
    small = fixed_size(model, sparsity)
    with torch.no_grad():
        torch.testing.assert_close(small(**batch), expected, atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        assert p.data_ptr() == before[n][0] and torch.equal(p, before[n][1]), n
    assert not {p.data_ptr() for p in small.parameters()} & {ptr for ptr, _ in before.values()}
    torch.testing.assert_close(reference(model, batch, sparsity), expected, atol=0, rtol=0)


def test_fixed_size_holds_only_kept_units(model: dynsparse.ElasticModel) -> None:
    small = fixed_size(model, 0.9)
    structure = model.structure(0.9)
    hd = model.shape.head_dim
    for layer, (heads, neurons) in zip(small.layers, structure, strict=True):
        assert layer.q_weight.shape == (heads * hd, model.shape.hidden)
        assert layer.attn_out_weight_t.shape == (heads * hd, model.shape.hidden)
        assert layer.ffn_in_weight.shape[0] == neurons and layer.ffn_out_weight_t.shape[0] == neurons
    assert sum(p.numel() for p in small.parameters()) == level_costs(model.shape, structure, 128)["params"]


def test_bad_sparsity_and_format(model: dynsparse.ElasticModel, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="sparsity"):
        fixed_size(model, 1.0)
    with pytest.raises(InputError, match="unknown export format 'tflite'"):
        export(model, 0.5, tmp_path / "x", "tflite")


def test_unwritable_output(model: dynsparse.ElasticModel, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="is a file"):
        export(model, 0.5, tmp_path / "file", "torch")
    with pytest.raises(InputError, match="cannot write the export"):
        export(model, 0.5, tmp_path / "file" / "sub", "torch")


def test_missing_onnx_names_the_extra(
    model: dynsparse.ElasticModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(InputError, match=r"needs onnxscript: pip install 'dynsparse\[export\]'"):
        export(model, 0.5, tmp_path / "x", "onnx")
    assert not (tmp_path / "x").exists()


# -- ONNX ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", LEVELS)
def test_onnx_matches_checkpoint(
    onnx_exports: dict[float, Path], model: dynsparse.ElasticModel, batch: dict[str, torch.Tensor], sparsity: float
) -> None:
    logits, session = run_onnx(onnx_exports[sparsity] / "model.onnx", batch)
    torch.testing.assert_close(logits, reference(model, batch, sparsity), atol=1e-4, rtol=1e-4)
    assert sorted(i.name for i in session.get_inputs()) == sorted(batch)  # exactly what the tokenizer gives
    assert json.loads(session.get_modelmeta().custom_metadata_map["dynsparse.labels"]) == list(model.meta.labels)


def test_onnx_is_smaller_when_sparser(onnx_exports: dict[float, Path], model: dynsparse.ElasticModel) -> None:
    dense, small = (onnx_exports[s] / "model.onnx" for s in (0.0, 0.9))
    assert small.stat().st_size < 0.7 * dense.stat().st_size
    meta = json.loads((onnx_exports[0.9] / EXPORT_META).read_text())
    assert meta["sparsity"] == 0.9 and meta["format"] == "onnx" and meta["labels"] == list(model.meta.labels)
    assert [tuple(x) for x in meta["structure"]] == list(model.structure(0.9))
    assert meta["params"] == sum(p.numel() for p in fixed_size(model, 0.9).parameters())
    assert (onnx_exports[0.9] / "tokenizer.json").is_file()
    assert not list(onnx_exports[0.9].glob(".tmp-*"))


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "electra"])
def test_families_in_both_formats(tiny_dir: Path, tmp_path: Path, family: str) -> None:
    pytest.importorskip("onnxscript")
    model = dynsparse.from_pretrained(str(tiny_dir / family))
    batch = dict(model.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    if family == "bert":  # no tokenizer to follow: the export takes the segment ids too
        model.tokenizer = None
        batch["token_type_ids"] = (torch.arange(batch["input_ids"].shape[1]) > 3).long().repeat(len(TEXTS), 1)
    expected = reference(model, batch, 0.5)
    logits, session = run_onnx(export(model, 0.5, tmp_path / "onnx", "onnx"), batch)
    assert sorted(i.name for i in session.get_inputs()) == sorted(batch)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    names = json.loads((tmp_path / "onnx" / EXPORT_META).read_text())["inputs"]
    scripted = torch.jit.load(str(export(model, 0.5, tmp_path / "torch", "torch")))
    torch.testing.assert_close(scripted(*(batch[name] for name in names)), expected, atol=1e-4, rtol=1e-4)


# -- TorchScript --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", LEVELS)
def test_torch_matches_checkpoint(
    model: dynsparse.ElasticModel, batch: dict[str, torch.Tensor], tmp_path: Path, sparsity: float
) -> None:
    loaded = torch.jit.load(str(export(model, sparsity, tmp_path, "torch")))
    logits = loaded(*(batch[name] for name in json.loads((tmp_path / EXPORT_META).read_text())["inputs"]))
    torch.testing.assert_close(logits, reference(model, batch, sparsity), atol=1e-4, rtol=1e-4)


def test_torch_loads_without_dynsparse(
    model: dynsparse.ElasticModel, batch: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    file = export(model, 0.5, tmp_path / "export", "torch")
    names = json.loads((file.parent / EXPORT_META).read_text())["inputs"]
    torch.save([batch[name] for name in names], tmp_path / "batch.pt")
    script = (
        "import sys, torch; sys.modules['dynsparse'] = None\n"  # any import of dynsparse now fails
        f"b = torch.load({str(tmp_path / 'batch.pt')!r})\n"
        f"m = torch.jit.load({str(file)!r})\n"
        f"torch.save(m(*b), {str(tmp_path / 'out.pt')!r})\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), reference(model, batch, 0.5), atol=1e-4, rtol=1e-4)


# -- command line -------------------------------------------------------------------------------------
def test_cli_round_trip(
    tiny_ckpt: Path, model: dynsparse.ElasticModel, batch: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    pytest.importorskip("onnxscript")
    r = cli(str(tiny_ckpt), "--sparsity", "0.5", "--format", "onnx", "--output", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    logits, _ = run_onnx(tmp_path / "out" / "model.onnx", batch)
    torch.testing.assert_close(logits, reference(model, batch, 0.5), atol=1e-4, rtol=1e-4)
    assert json.loads((tmp_path / "out" / EXPORT_META).read_text())["sparsity"] == 0.5


@pytest.mark.parametrize(
    "args,message",
    [
        (["--sparsity", "1.5", "--format", "onnx"], "sparsity must be in [0, 1)"),
        (["--sparsity", "half", "--format", "onnx"], "not a number"),
        (["--sparsity", "0.5", "--format", "tflite"], "invalid choice: 'tflite'"),
    ],
)
def test_cli_bad_arguments_exit_2(tiny_ckpt: Path, tmp_path: Path, args: list[str], message: str) -> None:
    r = cli(str(tiny_ckpt), *args, "--output", str(tmp_path / "out"))
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_unwritable_output_exit_2(tiny_ckpt: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    r = cli(str(tiny_ckpt), "--sparsity", "0.5", "--format", "torch", "--output", str(tmp_path / "file" / "out"))
    assert r.returncode == 2 and "cannot write the export" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


# -- every task, on a padded batch ------------------------------------------------------------------------
TASK_CKPTS = ("tiny_ckpt", "ner_ckpt", "qa_ckpt", "embed_ckpt")


def task_reference(
    model: dynsparse.ElasticModel, batch: dict[str, torch.Tensor], sparsity: float
) -> dict[str, torch.Tensor]:
    """The Python API's outputs at `sparsity` under the export's names (embeddings as /v1/embed returns them)."""
    with torch.no_grad():
        out = model(**batch, sparsity=sparsity)
    if model.task == "question-answering":
        return {"start_logits": out.logits[..., 0], "end_logits": out.logits[..., 1]}
    if model.task == "feature-extraction":
        return {
            "embeddings": torch.nn.functional.normalize(out.logits, dim=-1),
            "last_hidden_state": out.last_hidden_state,
        }
    return {"logits": out.logits}


@pytest.mark.parametrize("fmt", ["onnx", "torch"])
@pytest.mark.parametrize("ckpt", TASK_CKPTS)
def test_every_task_matches_on_a_padded_batch(
    request: pytest.FixtureRequest, tmp_path: Path, ckpt: str, fmt: str
) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxscript")
    model = dynsparse.load(str(request.getfixturevalue(ckpt)))
    batch = dict(model.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    expected = task_reference(model, batch, 0.5)
    file = export(model, 0.5, tmp_path, fmt)
    meta = json.loads((tmp_path / EXPORT_META).read_text())
    assert meta["outputs"] == list(expected) and meta["task"] == model.task
    if fmt == "onnx":
        session = pytest.importorskip("onnxruntime").InferenceSession(str(file), providers=["CPUExecutionProvider"])
        assert [o.name for o in session.get_outputs()] == list(expected)
        values = session.run(None, {i.name: batch[i.name].numpy() for i in session.get_inputs()})
        got = [torch.from_numpy(v) for v in values]
    else:
        out = torch.jit.load(str(file))(*(batch[name] for name in meta["inputs"]))
        got = list(out) if isinstance(out, tuple) else [out]
    for name, value in zip(expected, got, strict=True):
        torch.testing.assert_close(value, expected[name], atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    if model.task == "feature-extraction":  # unit vectors, and the padded rows pooled over their real tokens only
        torch.testing.assert_close(got[0].norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5, rtol=0)
