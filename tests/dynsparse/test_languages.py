"""Per-language orderings (the non-shared setting): one more ordering per language in the same checkpoint."""

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tiny, write_jsonl
from safetensors.torch import load_file

import dynsparse
from dynsparse.config import DataArguments, ModelArguments, SparsityArguments, TrainArguments
from dynsparse.errors import CheckpointError, InputError
from dynsparse.masks import nested_mask
from dynsparse.recipe import run_training

IDS = torch.tensor([[3, 10, 11, 12, 13, 4], [3, 20, 21, 4, 0, 0]])
MASK = (IDS != 0).long()
MAJORITY = 0.7  # upper bound of the larger class's share in the generated validation rows


def rows(n: int, seed: int) -> list[dict[str, object]]:
    """Two 'languages' with their own words (aa: w0-w49, bb: w50-w99); label 1 iff even-numbered words are more."""
    rng, out = random.Random(seed), []
    for _ in range(n):
        lang = rng.choice(["aa", "bb"])
        base = 0 if lang == "aa" else 50
        ids = [base + rng.randrange(50) for _ in range(rng.randrange(4, 20))]
        label = int(sum(i % 2 == 0 for i in ids) > len(ids) / 2)
        out.append({"text": " ".join(f"w{i}" for i in ids), "label": label, "language": lang})
    return out


def train(tmp: Path, out: str, **kw: object) -> Path:
    model = make_tiny("bert", tmp / "bert") if not (tmp / "bert").exists() else tmp / "bert"
    train_file, valid = write_jsonl(tmp / "train.jsonl", rows(400, 0)), write_jsonl(tmp / "valid.jsonl", rows(120, 1))
    targs = {
        "max_steps": 150,
        "per_device_train_batch_size": 16,
        "learning_rate": 2e-3,
        "seed": 0,
        "logging_steps": 10,
        **kw,
    }
    return run_training(
        ModelArguments(str(model)),
        DataArguments(train_file=str(train_file), validation_file=str(valid)),
        SparsityArguments(orderings="per-language"),
        TrainArguments(output_dir=str(tmp / out), **targs),  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory.mktemp("langs"), "run")


def test_a_language_runs_its_own_kept_units(tmp_path: Path) -> None:
    """At a size, a language's forward is the full model masked to the top units of that language's scores."""
    model = dynsparse.from_pretrained(str(make_tiny("bert", tmp_path / "bert"))).eval()
    s = model.shape
    g = torch.Generator().manual_seed(0)
    heads, neurons = torch.rand(2, s.layers, s.heads, generator=g), torch.rand(2, s.layers, s.intermediate, generator=g)
    model.set_language_scores(["de", "en"], heads, neurons)
    with torch.no_grad():
        for i, lang in enumerate(["de", "en"]):
            kept = model.structure(0.5, language=lang)
            hm = nested_mask(heads[i], torch.tensor([h for h, _ in kept])).float()
            nm = nested_mask(neurons[i], torch.tensor([n for _, n in kept])).float()
            want = model(input_ids=IDS, attention_mask=MASK, head_mask=hm, neuron_mask=nm).logits
            got = model(input_ids=IDS, attention_mask=MASK, sparsity=0.5, language=lang).logits
            assert torch.allclose(got, want, atol=1e-6)
        dense = [model(input_ids=IDS, attention_mask=MASK, language=x).logits for x in ("de", "en", None)]
        assert torch.allclose(dense[0], dense[2], atol=1e-6) and torch.allclose(dense[1], dense[2], atol=1e-6)
    with pytest.raises(InputError, match="no ordering for language 'fr'; this checkpoint's languages: de, en"):
        model(input_ids=IDS, attention_mask=MASK, sparsity=0.5, language="fr")


def test_training_stores_one_ordering_per_language(multi: Path) -> None:
    meta = json.loads((multi / "dynsparse.json").read_text())
    assert meta["ordering"]["languages"] == ["aa", "bb"]
    model = dynsparse.load(str(multi))
    assert model.languages == ["aa", "bb"] and model.language_head_scores is not None
    assert model.language_neuron_scores is not None
    assert not torch.equal(model.language_neuron_scores[0], model.language_neuron_scores[1])  # the data differ
    rows_ = meta["levels"]
    assert "by_language" in rows_[0] and rows_[0]["accuracy"] >= MAJORITY + 0.1
    assert min(r["accuracy"] for r in rows_) >= MAJORITY  # every size learned beyond the majority class
    # the same words through each language's ordering at a small size give different outputs
    with torch.no_grad():
        a, b = (model(input_ids=IDS, attention_mask=MASK, sparsity=0.7, language=x).logits for x in ("aa", "bb"))
    assert not torch.allclose(a, b)


def test_evaluate_compares_per_language_and_shared_orderings(multi: Path, tmp_path: Path) -> None:
    def evaluate(out: str, *extra: str) -> dict:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "dynsparse.cli",
                "evaluate",
                str(multi),
                "--validation_file",
                str(multi.parent / "valid.jsonl"),
                "--output_dir",
                str(tmp_path / out),
                "--levels",
                "0",
                "0.5",
                "0.9",
                "--latency_seq_len",
                "16",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        return json.loads((tmp_path / out / "levels.json").read_text())

    own, shared = evaluate("own"), evaluate("shared", "--ordering", "shared")
    assert own["levels"][0]["accuracy"] == shared["levels"][0]["accuracy"]  # dense: every ordering keeps everything
    assert set(own["levels"][0]["by_language"]) == {"aa", "bb"}
    assert (tmp_path / "own" / "languages.png").stat().st_size > 5000


def test_per_language_training_resumes_exactly(multi: Path, tmp_path: Path) -> None:
    full = train(tmp_path, "full", max_steps=30, save_steps=10)
    part = train(tmp_path, "part", max_steps=30, save_steps=10)
    shutil.rmtree(part / "checkpoint-30")
    (part / "model.safetensors").unlink()
    (part / "dynsparse.json").unlink()
    train(tmp_path, "part", max_steps=30, save_steps=10, resume_from_checkpoint=str(part / "checkpoint-20"))
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert "language_head_scores" in a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_per_language_needs_languages_and_taylor(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--orderings per-language needs --importance taylor"):
        SparsityArguments(orderings="per-language", importance="learned")
    model = make_tiny("bert", tmp_path / "bert")
    data = write_jsonl(tmp_path / "t.jsonl", [{k: v for k, v in r.items() if k != "language"} for r in rows(40, 0)])
    with pytest.raises(InputError, match="needs a language column"):
        run_training(
            ModelArguments(str(model)),
            DataArguments(train_file=str(data)),
            SparsityArguments(orderings="per-language"),
            TrainArguments(output_dir=str(tmp_path / "o"), max_steps=2),
        )


def test_a_hostile_language_list_is_refused(multi: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(multi, bad, ignore=shutil.ignore_patterns("checkpoint-*"))
    meta = json.loads((bad / "dynsparse.json").read_text())
    meta["ordering"]["languages"] = ["aa", "aa"]
    (bad / "dynsparse.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="ordering.languages must be up to 256 distinct names"):
        dynsparse.load(str(bad))
    meta["ordering"]["languages"] = ["aa"]  # the file holds two orderings: shapes disagree
    (bad / "dynsparse.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="language_head_scores has shape"):
        dynsparse.load(str(bad))


def test_an_export_keeps_a_languages_own_units(multi: Path, tmp_path: Path) -> None:
    from dynsparse.export import export

    model = dynsparse.load(str(multi))
    small = torch.jit.load(str(export(model, 0.7, tmp_path / "aa", "torch", language="aa")))
    with torch.no_grad():
        want = model(input_ids=IDS, attention_mask=MASK, sparsity=0.7, language="aa").logits
        assert torch.allclose(small(IDS, MASK), want, atol=1e-5)
        shared = model(input_ids=IDS, attention_mask=MASK, sparsity=0.7).logits
        assert not torch.allclose(want, shared)  # its own units, not the shared prefix
    assert json.loads((tmp_path / "aa" / "dynsparse_export.json").read_text())["language"] == "aa"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dynsparse.cli",
            "export",
            str(multi),
            "--sparsity",
            "0.5",
            "--format",
            "torch",
            "--language",
            "fr",
            "--output",
            str(tmp_path / "fr"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "no ordering for language 'fr'" in r.stderr and not (tmp_path / "fr").exists()


def test_rewiring_moves_each_languages_scores_with_its_units(tmp_path: Path) -> None:
    from dynsparse.rewire import rewire

    model = dynsparse.from_pretrained(str(make_tiny("bert", tmp_path / "bert"))).eval()
    s = model.shape
    model.set_language_scores(["de", "en"], torch.rand(2, s.layers, s.heads), torch.rand(2, s.layers, s.intermediate))
    with torch.no_grad():
        before = [model(input_ids=IDS, attention_mask=MASK, sparsity=0.6, language=x).logits for x in ("de", "en")]
        rewire(model, torch.rand(s.layers, s.heads), torch.rand(s.layers, s.intermediate))  # a new shared order
        after = [model(input_ids=IDS, attention_mask=MASK, sparsity=0.6, language=x).logits for x in ("de", "en")]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(before, after, strict=True))
