from pathlib import Path

from transformers import AutoModelForSequenceClassification

import dynsparse
from dynsparse.cost import flops, level_costs


def test_dense_params_equal_the_transformers_model(tiny_dir: Path) -> None:
    for family in ("bert", "roberta", "electra"):
        ref = AutoModelForSequenceClassification.from_pretrained(tiny_dir / family)
        ours = dynsparse.from_pretrained(str(tiny_dir / family))
        costs = level_costs(ours.shape, ours.structure(0.0), 128)
        assert costs["params"] == sum(p.numel() for p in ref.parameters())
        trainable = sum(p.numel() for n, p in ours.named_parameters())
        assert costs["params"] == trainable


def test_costs_fall_with_sparsity_and_embeddings_stay(tiny_dir: Path) -> None:
    model = dynsparse.from_pretrained(str(tiny_dir / "bert"))
    rows = [level_costs(model.shape, model.structure(s / 10), 128) for s in range(10)]
    pairs = zip(rows, rows[1:], strict=False)
    assert all(a["flops"] >= b["flops"] and a["params_encoder"] >= b["params_encoder"] for a, b in pairs)
    assert len({r["params_embeddings"] for r in rows}) == 1
    assert rows[0]["prunable_removed"] == 0.0 and rows[-1]["prunable_removed"] > 0.6


def test_attention_flops_grow_quadratically(tiny_dir: Path) -> None:
    model = dynsparse.from_pretrained(str(tiny_dir / "bert"))
    s = model.structure(0.0)
    assert flops(model.shape, s, 256) > 2 * flops(model.shape, s, 128)
