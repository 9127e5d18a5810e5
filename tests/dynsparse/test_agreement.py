"""The agreement measures: identical outputs agree fully, and each measure sees what it should."""

import torch
import torch.nn.functional as F

from dynsparse.agreement import cosine_to_dense, label_agreement, span_agreement, token_agreement


def test_identical_outputs_agree_fully() -> None:
    torch.manual_seed(0)
    logp = torch.randn(3, 5, 4).log_softmax(-1)
    kl, top1 = token_agreement(logp, logp)
    assert torch.allclose(kl, torch.zeros(3), atol=1e-6) and torch.equal(top1, torch.ones(3))
    e = torch.randn(4, 8)
    assert torch.allclose(cosine_to_dense(e, e), torch.ones(4))
    assert torch.equal(label_agreement(torch.tensor([2, 0]), torch.tensor([2, 0])), torch.ones(2))


def test_each_measure_counts_disagreement() -> None:
    assert label_agreement(torch.tensor([1, 0, 1]), torch.tensor([1, 1, 1])).tolist() == [1.0, 0.0, 1.0]
    spans = span_agreement(torch.tensor([[3, 5], [3, 5]]), torch.tensor([[3, 5], [3, 6]]))
    assert spans.tolist() == [1.0, 0.0]
    assert cosine_to_dense(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])).item() == 0.0


def test_token_kl_is_the_dense_to_served_divergence_over_masked_tokens() -> None:
    torch.manual_seed(1)
    served, dense = torch.randn(2, 6, 3).log_softmax(-1), torch.randn(2, 6, 3).log_softmax(-1)
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    kl, top1 = token_agreement(served, dense, mask)
    want = F.kl_div(served[0, :2], dense[0, :2], log_target=True, reduction="none").sum(-1).mean()
    assert torch.allclose(kl[0], want, atol=1e-6)
    agree = (served[0, :2].argmax(-1) == dense[0, :2].argmax(-1)).float().mean()
    assert top1[0] == agree
    assert kl[1] == 0.0 and top1[1] == 1.0  # no token counted: nothing disagrees
