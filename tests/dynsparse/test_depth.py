"""Elastic depth: layers dropped in a fixed or learned order, nested like width, trained once-for-all."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tiny, train_tiny

import dynsparse
from dynsparse.errors import CheckpointError, InputError
from dynsparse.export import export
from dynsparse.orderings import every_other

IDS = torch.tensor([[3, 10, 11, 12, 13, 4], [3, 20, 21, 4, 0, 0]])
MASK = (IDS != 0).long()


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory) -> dynsparse.ElasticModel:
    """A tiny BERT of 4 layers (the depth orders only differ with more than two)."""
    import transformers

    path = make_tiny("bert", tmp_path_factory.mktemp("deep") / "bert")
    config = transformers.AutoConfig.from_pretrained(path)
    config.num_hidden_layers = 4
    transformers.BertForSequenceClassification(config).save_pretrained(path)
    return dynsparse.from_pretrained(str(path)).eval()


def test_every_other_keeps_alternate_layers_at_half_depth() -> None:
    assert every_other(6) == [0, 2, 4, 1, 3, 5]
    assert sorted(every_other(6)[:3]) == [0, 2, 4]


def test_depth_is_nested_and_a_dropped_layer_is_skipped(deep: dynsparse.ElasticModel) -> None:
    kept = [{i for i, hn in enumerate(deep.structure(0.5, d)) if hn != (0, 0)} for d in (4, 3, 2, 1)]
    assert [len(k) for k in kept] == [4, 3, 2, 1]
    assert all(small <= big for big, small in zip(kept, kept[1:], strict=False))  # nested
    assert kept[2] == {0, 2}  # every other layer
    # the depth-2 forward is the full model with the residual branches of layers 1 and 3 gated to zero
    with torch.no_grad():
        sliced = deep(input_ids=IDS, attention_mask=MASK, sparsity=0.5, depth=2).logits
        gated = deep(input_ids=IDS, attention_mask=MASK, sparsity=0.5, layer_mask=torch.tensor([1.0, 0, 1, 0])).logits
    assert torch.allclose(sliced, gated, atol=1e-6)


def test_costs_fall_with_depth(deep: dynsparse.ElasticModel) -> None:
    full, half = deep.costs(0.0, 64), deep.costs(0.0, 64, depth=2)
    assert half["params_encoder"] * 2 == full["params_encoder"]
    assert half["params_embeddings"] == full["params_embeddings"]  # depth is not the embedding matrix
    assert half["flops"] < 0.6 * full["flops"]


@pytest.mark.parametrize("depth", [0, 5, -1, 2.5, True])
def test_a_depth_out_of_range_is_refused(deep: dynsparse.ElasticModel, depth: object) -> None:
    with pytest.raises(InputError, match="depth must be a whole number of layers from 1 to 4"):
        deep.structure(0.0, depth)  # type: ignore[arg-type]


def test_the_layer_order_travels_with_the_checkpoint(deep: dynsparse.ElasticModel, tmp_path: Path) -> None:
    deep.set_layer_order([3, 0, 1, 2], "taylor")
    try:
        dynsparse.save(deep, tmp_path / "ck")
    finally:
        deep.set_layer_order(every_other(4), "every-other")
    loaded = dynsparse.load(str(tmp_path / "ck"))
    assert loaded.layer_order == [3, 0, 1, 2]
    assert [i for i, hn in enumerate(loaded.structure(0.0, 1)) if hn != (0, 0)] == [3]
    meta = json.loads((tmp_path / "ck" / "dynsparse.json").read_text())
    meta["depth"]["order"] = [0, 0, 1, 2]
    (tmp_path / "ck" / "dynsparse.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="depth.order must rank each of the 4 layers once"):
        dynsparse.load(str(tmp_path / "ck"))


def test_an_export_at_a_depth_holds_only_its_layers(deep: dynsparse.ElasticModel, tmp_path: Path) -> None:
    file = export(deep, 0.5, tmp_path / "ex", "torch", depth=2)
    small = torch.jit.load(str(file))
    with torch.no_grad():
        want = deep(input_ids=IDS, attention_mask=MASK, sparsity=0.5, depth=2).logits
        assert torch.allclose(small(IDS, MASK), want, atol=1e-5)
    sidecar = json.loads((tmp_path / "ex" / "dynsparse_export.json").read_text())
    assert sidecar["layers"] == 2 and len(sidecar["structure"]) == 2


@pytest.fixture(scope="module")
def depth_ckpt(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Width and depth trained together; the layer order from Taylor gates on whole layers."""
    out = tmp_path_factory.mktemp("depth") / "run"
    return train_tiny(tiny_dir, out, sparsity={"min_depth": 1, "layer_order": "taylor"})


def test_training_with_elastic_depth_teaches_the_shallow_model(depth_ckpt: Path, tiny_ckpt: Path) -> None:
    meta = json.loads((depth_ckpt / "dynsparse.json").read_text())
    assert meta["depth"]["min_layers"] == 1 and meta["depth"]["rule"] == "taylor"
    assert sorted(meta["depth"]["order"]) == [0, 1]
    rows = json.loads((depth_ckpt / "levels.json").read_text())["levels"]
    assert {r["depth"] for r in rows} == {2, 1}  # the table covers every trained depth
    assert [r["depth"] for r in meta["levels"]] == [2] * 10  # the served size table stays the width axis
    shallow = [r for r in rows if r["depth"] == 1]
    assert all(r["latency_ms"] > 0 and r["params_encoder"] < rows[0]["params_encoder"] for r in shallow)
    log = [json.loads(line) for line in (depth_ckpt / "train_log.jsonl").read_text().splitlines()]
    assert any(r["phase"] == "sandwich" for r in log)


def test_cli_evaluates_depths_and_refuses_a_bad_one(
    depth_ckpt: Path, tiny_ckpt: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    def evaluate(ckpt: Path, out: Path, *depths: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "dynsparse.cli",
                "evaluate",
                str(ckpt),
                "--depths",
                *depths,
                "--validation_file",
                str(tiny_dir / "validation.csv"),
                "--output_dir",
                str(out),
                "--levels",
                "0",
                "0.5",
                "--latency_seq_len",
                "16",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )

    bad = evaluate(depth_ckpt, tmp_path / "bad", "3")
    assert bad.returncode == 2 and "depth must be a whole number of layers from 1 to 2" in bad.stderr
    assert not (tmp_path / "bad").exists()
    assert evaluate(tiny_ckpt, tmp_path / "width", "2", "1").returncode == 0
    width = json.loads((tmp_path / "width" / "levels.json").read_text())["levels"]
    assert [(r["depth"], r["sparsity"]) for r in width] == [(2, 0.0), (2, 0.5), (1, 0.0), (1, 0.5)]
    assert (tmp_path / "width" / "levels.png").stat().st_size > 5000
    # the shallowest trained size learned the task (one layer suffices for it: cutting works too, see the README
    # study on real data for where training the depth matters)
    trained = [r for r in json.loads((depth_ckpt / "levels.json").read_text())["levels"] if r["depth"] == 1]
    majority = 0.64
    assert trained[0]["accuracy"] >= majority + 0.15 and min(r["accuracy"] for r in trained) >= majority + 0.1
