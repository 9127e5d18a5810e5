"""A checkpoint directory carries its modeling code: transformers loads the elastic model with trust_remote_code (the
outputs of `dynsparse.load`, at any size) and refuses without it; checkpoints written before still load."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import dynsparse
from dynsparse.hf_remote import CODE_FILES
from dynsparse.tasks import task_spec

TEXTS = ["w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12", "w13 w14", "w15 w16 w17 w18 w19"]
TASK_CKPTS = ("tiny_ckpt", "ner_ckpt", "qa_ckpt", "embed_ckpt")


def outputs(out: object, task: str) -> torch.Tensor:
    """transformers' outputs of a task model as one tensor, laid out as dynsparse's logits (embeddings: states)."""
    if task == "question-answering":
        return torch.stack([out.start_logits, out.end_logits], dim=-1)  # type: ignore[attr-defined]
    if task == "feature-extraction":
        return out.last_hidden_state  # type: ignore[attr-defined]
    return out.logits  # type: ignore[attr-defined]


def expected(model: dynsparse.ElasticModel, batch: dict[str, torch.Tensor], **size: object) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch, **size)
    return out.last_hidden_state if model.task == "feature-extraction" else out.logits


def test_config_names_the_code_beside_it(tiny_ckpt: Path) -> None:
    raw = json.loads((tiny_ckpt / "config.json").read_text())
    assert raw["model_type"] == "dynsparse" and raw["base_model_type"] == "bert"
    auto = raw["auto_map"]["AutoModelForSequenceClassification"]
    assert auto == "modeling_dynsparse.DynsparseForSequenceClassification"
    assert all((tiny_ckpt / name).is_file() for name in CODE_FILES)
    assert raw["hidden_size"] == 32 and raw["dynsparse"]["task"] == "text-classification"


@pytest.mark.parametrize("ckpt", TASK_CKPTS)
def test_transformers_loads_every_task_at_any_size(request: pytest.FixtureRequest, ckpt: str) -> None:
    path = request.getfixturevalue(ckpt)
    model = dynsparse.load(str(path))
    batch = dict(model.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    assert not batch["attention_mask"].all()
    auto = getattr(transformers, task_spec(model.task).auto_class)
    hf = auto.from_pretrained(path, trust_remote_code=True).eval()
    assert type(hf).__name__.startswith("Dynsparse")
    with torch.no_grad():
        dense, half = outputs(hf(**batch), model.task), outputs(hf(**batch, sparsity=0.5, depth=1), model.task)
    torch.testing.assert_close(dense, expected(model, batch), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(half, expected(model, batch, sparsity=0.5, depth=1), atol=1e-5, rtol=1e-5)
    small = auto.from_pretrained(path, trust_remote_code=True, sparsity=0.9).eval()  # the size it runs by default
    with torch.no_grad():
        torch.testing.assert_close(
            outputs(small(**batch), model.task), expected(model, batch, sparsity=0.9), atol=1e-5, rtol=1e-5
        )


def test_global_allocation_matches(tiny_dir: Path, tmp_path: Path) -> None:
    """The shipped code repeats the global ranking: the same per-layer counts at every size."""
    model = dynsparse.from_pretrained(str(tiny_dir / "roberta"), allocation="global")
    g = torch.Generator().manual_seed(0)
    model.set_scores(
        torch.rand(2, 4, generator=g).sort(-1, descending=True).values,
        torch.rand(2, 64, generator=g).sort(-1, descending=True).values,
    )
    dynsparse.save(model, str(tmp_path / "ckpt"))
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "ckpt", trust_remote_code=True)
    batch = dict(model.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    for s in (0.0, 0.3, 0.6, 0.9):
        assert hf.structure(s) == model.structure(s)
        with torch.no_grad():
            torch.testing.assert_close(
                hf(**batch, sparsity=s).logits, expected(model, batch, sparsity=s), atol=1e-5, rtol=1e-5
            )
    assert len({model.structure(s) for s in (0.3, 0.6)}) == 2 and len(set(model.structure(0.6))) == 2


def test_refused_without_remote_code_and_runs_without_dynsparse(tiny_ckpt: Path, tmp_path: Path) -> None:
    """In a fresh process where dynsparse cannot be imported: no trust_remote_code is transformers' own error (for
    the auto class and the pipeline); with it, the logits of the checkpoint."""
    model = dynsparse.load(str(tiny_ckpt))
    batch = dict(model.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    torch.save(batch, tmp_path / "batch.pt")
    script = (
        "import sys, torch, transformers; sys.modules['dynsparse'] = None\n"
        "from transformers import AutoModelForSequenceClassification as A, pipeline\n"
        "for load in (lambda: A.from_pretrained(sys.argv[1]), lambda: pipeline('text-classification', sys.argv[1])):\n"
        "    try:\n        load()\n        print('LOADED')\n"
        "    except ValueError as e:\n        print('REFUSED', str(e).splitlines()[0])\n"
        "m = A.from_pretrained(sys.argv[1], trust_remote_code=True).eval()\n"
        "torch.save(m(**torch.load(sys.argv[2])).logits.detach(), sys.argv[3])\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script, str(tiny_ckpt), str(tmp_path / "batch.pt"), str(tmp_path / "out.pt")],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    # transformers prints its prompt without a newline before raising: count the markers, not lines
    assert r.stdout.count("REFUSED The repository") == 2 and "LOADED" not in r.stdout, r.stdout
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected(model, batch), atol=1e-5, rtol=1e-5)


def test_a_checkpoint_of_the_old_layout_still_loads(tiny_ckpt: Path, tmp_path: Path) -> None:
    """Written before the code was shipped: config.json is the base config itself, no modeling files."""
    model = dynsparse.load(str(tiny_ckpt))
    old = tmp_path / "old"
    shutil.copytree(tiny_ckpt, old, ignore=shutil.ignore_patterns("checkpoint-*", *CODE_FILES))
    (old / "config.json").unlink()
    model.hf_config.save_pretrained(old)
    assert json.loads((old / "config.json").read_text())["model_type"] == "bert"
    again = dynsparse.load(str(old))
    batch = dict(model.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    torch.testing.assert_close(expected(again, batch, sparsity=0.5), expected(model, batch, sparsity=0.5))
    assert {k: v for k, v in again.hf_config.to_dict().items() if k != "_name_or_path"} == {
        k: v for k, v in model.hf_config.to_dict().items() if k != "_name_or_path"
    }
