from pathlib import Path

import torch
import torch.nn.functional as F

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
