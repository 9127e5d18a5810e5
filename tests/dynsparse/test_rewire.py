from pathlib import Path

import torch

import dynsparse
from dynsparse.rewire import rewire


def test_rewiring_keeps_the_dense_function_and_sorts_scores(tiny_dir: Path) -> None:
    model = dynsparse.from_pretrained(str(tiny_dir / "bert")).eval()
    ids = torch.tensor([[3, 10, 11, 12, 4], [3, 13, 4, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        rewire(model, torch.rand(2, 4), torch.rand(2, 64))
        after = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(before, after, atol=1e-5)
    assert torch.all(model.head_scores[:, :-1] >= model.head_scores[:, 1:])
    assert torch.all(model.neuron_scores[:, :-1] >= model.neuron_scores[:, 1:])


def test_optimizer_moments_follow_their_weights(tiny_dir: Path) -> None:
    model = dynsparse.from_pretrained(str(tiny_dir / "bert"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.tensor([[3, 10, 11, 4]])
    model(input_ids=ids).logits.sum().backward()
    opt.step()
    w = model.layers[0].ffn_in_weight
    moment_of_row = {tuple(w[i].tolist()): opt.state[w]["exp_avg"][i].clone() for i in range(w.shape[0])}
    rewire(model, torch.rand(2, 4), torch.rand(2, 64), opt)
    for i in range(w.shape[0]):
        assert torch.equal(opt.state[w]["exp_avg"][i], moment_of_row[tuple(w[i].tolist())])
