"""Rewiring: permute every layer's heads and neurons into importance order, so each size is a prefix.

A permutation leaves the dense function unchanged; it only decides which units a smaller size keeps.
Because every prunable weight holds its unit on dim 0, one index per layer permutes them all, and the
optimizer's moment estimates move with their weights (training can rewire mid-run).
"""

import torch
from torch import Tensor

from dynsparse.modeling import ElasticModel

_HEAD_ROWS = ("q_weight", "q_bias", "k_weight", "k_bias", "v_weight", "v_bias", "attn_out_weight_t")
_NEURON_ROWS = ("ffn_in_weight", "ffn_in_bias", "ffn_out_weight_t")


def unit_order(scores: Tensor) -> Tensor:
    """Per layer, unit indices by descending score (stable: ties keep the current order)."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices  # (L, U)


@torch.no_grad()
def rewire(
    model: ElasticModel, head_scores: Tensor, neuron_scores: Tensor, optimizer: torch.optim.Optimizer | None = None
) -> None:
    """Reorder `model`'s units by the given scores (L, H) and (L, F) and record the sorted scores."""
    head_order, neuron_order = unit_order(head_scores.cpu()), unit_order(neuron_scores.cpu())
    hd = model.shape.head_dim
    for layer, h_order, n_order in zip(model.layers, head_order, neuron_order, strict=True):
        rows = (h_order[:, None] * hd + torch.arange(hd)).flatten()  # (H * hd,) head blocks of rows
        for name in _HEAD_ROWS:
            _permute_rows(getattr(layer, name), rows, optimizer)
        for name in _NEURON_ROWS:
            _permute_rows(getattr(layer, name), n_order, optimizer)
    if model.language_head_scores is not None and model.language_neuron_scores is not None:
        n = len(model.languages)  # each language's scores follow their units to the new positions
        model.set_language_scores(
            model.languages,
            torch.gather(model.language_head_scores.cpu(), 2, head_order.expand(n, -1, -1)),
            torch.gather(model.language_neuron_scores.cpu(), 2, neuron_order.expand(n, -1, -1)),
        )
    model.set_scores(
        torch.gather(head_scores.cpu(), 1, head_order).to(model.head_scores),
        torch.gather(neuron_scores.cpu(), 1, neuron_order).to(model.neuron_scores),
    )


def _permute_rows(p: torch.nn.Parameter, rows: Tensor, optimizer: torch.optim.Optimizer | None) -> None:
    rows = rows.to(p.device)
    p.copy_(p[rows])
    if optimizer is not None:  # Adam's moments belong to the weights they follow
        for v in optimizer.state.get(p, {}).values():
            if isinstance(v, Tensor) and v.shape == p.shape:
                v.copy_(v[rows])
