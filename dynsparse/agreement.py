"""Agreement with the dense size: how far a smaller size's outputs are from the dense model's on the same inputs.

The dense model is the same weights, so it is a free teacher on any text, labelled or not: the server compares a
sample of its traffic with it (`service.shadow`) and `dynsparse evaluate` a file (`dynsparse.twin`). Pure tensor
functions, one value per input, so callers can sum them over any window:

    classification   label_agreement   1 when the predicted labels are equal
    tokens           token_agreement   per text: mean KL(dense || served) and the share of tokens whose tags agree
    question answer  span_agreement    1 when the answer spans (start, end) are equal
    embeddings       cosine_to_dense   cosine of the two embeddings

Example:
    >>> label_agreement(torch.tensor([1, 0, 1]), torch.tensor([1, 1, 1]))
    tensor([1., 0., 1.])
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def label_agreement(served: Tensor, dense: Tensor) -> Tensor:
    """(N,) 1.0 where the label ids (N,) agree, else 0.0."""
    return (served == dense).float()


def span_agreement(served: Tensor, dense: Tensor) -> Tensor:
    """(N,) 1.0 where the spans (N, 2) (start, end) are equal, else 0.0."""
    return (served == dense).all(-1).float()


def cosine_to_dense(served: Tensor, dense: Tensor) -> Tensor:
    """(N,) cosine of each served embedding (N, H) with its dense one (1.0: the same direction)."""
    return F.cosine_similarity(served.float(), dense.float(), dim=-1)


def token_agreement(served_logp: Tensor, dense_logp: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per text, (mean KL(dense || served) in nats, share of tokens whose top-1 tags agree), each (N,), over the
    tokens where `mask` (N, T) is true (all when None).

    Args:
        served_logp: (N, T, C) log-probabilities of the tags at the served size.
        dense_logp: (N, T, C) the same at the dense size.
        mask: (N, T) the tokens to count; a text with none counts as full agreement (KL 0, top-1 1).
    """
    keep = torch.ones(served_logp.shape[:2], dtype=torch.bool) if mask is None else mask.bool()  # (N, T)
    s, d = served_logp.float(), dense_logp.float()
    kl = (d.exp() * (d - s)).sum(-1).clamp(min=0.0)  # (N, T): clamped, float error can dip below 0
    top1 = (s.argmax(-1) == d.argmax(-1)).float()  # (N, T)
    n = keep.sum(-1)  # (N,)
    mean_kl = torch.where(n > 0, (kl * keep).sum(-1) / n.clamp(min=1), torch.zeros_like(n, dtype=kl.dtype))
    share = torch.where(n > 0, (top1 * keep).sum(-1) / n.clamp(min=1), torch.ones_like(n, dtype=top1.dtype))
    return mean_kl, share
