from pathlib import Path

import torch
import torch.nn.functional as F
from conftest import train_tiny

import dynsparse
from dynsparse.importance import TaylorScorer, magnitude_scores


def test_magnitude_ranks_a_zeroed_head_last(tiny_dir: Path) -> None:
    model = dynsparse.from_pretrained(str(tiny_dir / "bert"))
    with torch.no_grad():
        for name in ("q_weight", "k_weight", "v_weight", "attn_out_weight_t"):
            getattr(model.layers[1], name)[8:16] = 0  # head 1 of layer 1 (head_dim 8)
    heads, neurons = magnitude_scores(model)
    assert heads.shape == (2, 4) and neurons.shape == (2, 64)
    assert heads[1].argmin().item() == 1


def test_taylor_matches_the_loss_change_of_removing_a_unit(tiny_dir: Path) -> None:
    """|dL/dm| at m=1 is the first-order estimate of removing the unit; check it against a finite difference."""
    model = dynsparse.from_pretrained(str(tiny_dir / "bert")).eval()
    ids = torch.tensor([[3, 10, 11, 12, 13, 4], [3, 20, 21, 4, 0, 0]])
    mask, labels = (ids != 0).long(), torch.tensor([0, 1])
    scorer = TaylorScorer(2, 4, 64)
    hg, ng = scorer.gates()
    F.cross_entropy(model(input_ids=ids, attention_mask=mask, head_mask=hg, neuron_mask=ng).logits, labels).backward()
    grad = hg.grad[0, 2].item()
    scorer.update(hg, ng)
    eps = 1e-3
    with torch.no_grad():

        def loss_at(m: float) -> float:
            gate = torch.ones(2, 4)
            gate[0, 2] = m
            return F.cross_entropy(model(input_ids=ids, attention_mask=mask, head_mask=gate).logits, labels).item()

        finite = (loss_at(1 + eps) - loss_at(1 - eps)) / (2 * eps)
    assert abs(finite - grad) < 1e-3 * max(1.0, abs(grad))
    heads, _ = scorer.scores()
    assert heads[0, 2].item() == abs(grad) and torch.all(heads >= 0)


def test_learned_gates_fold_into_the_weights_without_changing_the_function(tiny_dir: Path) -> None:
    from dynsparse.importance import LearnedScorer

    model = dynsparse.from_pretrained(str(tiny_dir / "bert")).eval()
    scorer = LearnedScorer(2, 4, 64)
    with torch.no_grad():
        scorer.head_scores.uniform_(0, 2)
        scorer.neuron_scores.uniform_(0, 2)
    ids = torch.tensor([[3, 10, 11, 12, 13, 4]])
    with torch.no_grad():
        gated = model(input_ids=ids, head_mask=scorer.head_scores, neuron_mask=scorer.neuron_scores).logits
        scorer.fold(model)
        folded = model(input_ids=ids).logits
    assert torch.allclose(gated, folded, atol=1e-5)


def test_learned_gates_shrink_under_the_l1_pull(tiny_dir: Path) -> None:
    """With no task gradient at all, the L1 term alone moves every gate below 1."""
    from dynsparse.importance import LearnedScorer

    scorer = LearnedScorer(2, 4, 64, l1=1.0)
    for _ in range(5):
        hg, ng = scorer.gates()
        hg.grad, ng.grad = torch.zeros_like(hg), torch.zeros_like(ng)
        scorer.update(hg, ng)
    heads, neurons = scorer.scores()
    assert heads.max() < 1 and neurons.max() < 1 and scorer.steps == 5


def _run(tiny_dir: Path, out: Path, model: Path, **sparsity: object) -> Path:
    from dynsparse.config import DataArguments, ModelArguments, SparsityArguments, TrainArguments
    from dynsparse.recipe import run_training

    return run_training(
        ModelArguments(str(model)),
        DataArguments(train_file=str(tiny_dir / "train.csv"), validation_file=str(tiny_dir / "validation.csv")),
        SparsityArguments(**sparsity),  # type: ignore[arg-type]
        TrainArguments(output_dir=str(out), max_steps=40, per_device_train_batch_size=16, learning_rate=2e-3),
    )


def test_one_shot_orders_a_model_without_changing_it(tiny_dir: Path, tiny_ckpt: Path, tmp_path: Path) -> None:
    """The baseline: Taylor scores from data, then a rewire; the dense model computes exactly what it did."""
    import json
    import subprocess
    import sys

    shot = _run(tiny_dir, tmp_path / "oneshot", tiny_dir / "bert", mode="one-shot")
    model = dynsparse.load(str(shot)).eval()
    start = dynsparse.from_pretrained(str(tiny_dir / "bert")).eval()
    ids = torch.tensor([[3, 10, 11, 12, 13, 4], [3, 20, 21, 4, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        assert torch.allclose(
            model(input_ids=ids, attention_mask=mask).logits,
            start(input_ids=ids, attention_mask=mask).logits,
            atol=1e-5,
        )
    assert not torch.equal(model.head_scores, start.head_scores)  # a data-driven order replaced the natural one
    meta = json.loads((shot / "dynsparse.json").read_text())
    assert meta["ordering"]["estimator"] == "taylor" and meta["ordering"]["mode"] == "one-shot"
    # compare it with the once-for-all checkpoint on one plot
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dynsparse.cli",
            "evaluate",
            str(tiny_ckpt),
            str(shot),
            "--validation_file",
            str(tiny_dir / "validation.csv"),
            "--output_dir",
            str(tmp_path / "cmp"),
            "--levels",
            "0",
            "0.5",
            "0.9",
            "--latency_seq_len",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    curves = json.loads((tmp_path / "cmp" / "compare.json").read_text())["curves"]
    assert len(curves) == 2 and all(len(c) == 3 and "accuracy" in c[0] for c in curves.values())
    assert any("one-shot" in name for name in curves) and (tmp_path / "cmp" / "compare.png").stat().st_size > 5000


def test_fine_tune_mode_trains_dense_and_orders_at_the_end(tiny_dir: Path, tmp_path: Path) -> None:
    """The fine-tune-then-prune baseline from a pretrained model: dense steps only, then one rewire."""
    import json

    run = train_tiny(tiny_dir, tmp_path / "ft", sparsity={"mode": "fine-tune"})  # as long as tiny_ckpt's run
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in log} == {"fine-tune"} and all(len(r["loss_by_size"]) == 1 for r in log)
    meta = json.loads((run / "dynsparse.json").read_text())
    assert meta["ordering"] == {**meta["ordering"], "estimator": "taylor", "mode": "fine-tune"}
    model = dynsparse.load(str(run))
    start = dynsparse.from_pretrained(str(tiny_dir / "bert"))
    assert not torch.equal(model.head_scores, start.head_scores)  # ordered by the whole run's Taylor scores
    assert torch.all(model.neuron_scores[:, :-1] >= model.neuron_scores[:, 1:])
    rows = meta["levels"]
    assert rows[0]["accuracy"] >= 0.64 + 0.15  # the dense model learned; smaller sizes were never trained


def test_learned_importance_trains_every_size(tiny_dir: Path, tmp_path: Path) -> None:
    import json

    run = _run(tiny_dir, tmp_path / "learned", tiny_dir / "bert", importance="learned", importance_ratio=0.25)
    meta = json.loads((run / "dynsparse.json").read_text())
    assert meta["ordering"]["estimator"] == "learned"
    scores = dynsparse.load(str(run)).head_scores
    assert torch.all(scores[:, :-1] >= scores[:, 1:])  # rewired: stored in descending gate order
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in meta["levels"])
