"""Importance estimators: one score per head and per FFN neuron, which fixes each layer's ordering.

- taylor: first-order Taylor estimate of the loss change when a unit is removed, |m * dL/dm| at m = 1,
  accumulated over steps (Michel et al. 2019; DynaBERT). Gates of ones scale each unit's output in a
  dense forward; their gradients are the estimate.
- magnitude: L2 norm of the unit's weights (no data needed).
- natural: the checkpoint's own order (a descending ramp), i.e. no reordering.
"""

from dataclasses import dataclass, field

import torch
from torch import Tensor

from dynsparse.modeling import ElasticLayer, ElasticModel


@torch.no_grad()
def magnitude_scores(model: ElasticModel) -> tuple[Tensor, Tensor]:
    """L2 norm of each head's (q, k, v, output) rows and each neuron's (in, out) rows: (L, H), (L, F)."""
    heads, neurons = [], []
    for layer in model.layers:
        assert isinstance(layer, ElasticLayer)
        w = torch.cat([layer.q_weight, layer.k_weight, layer.v_weight, layer.attn_out_weight_t], dim=1)  # (A, 4H)
        heads.append(w.view(model.shape.heads, -1).norm(dim=1))
        neurons.append(torch.cat([layer.ffn_in_weight, layer.ffn_out_weight_t], dim=1).norm(dim=1))
    return torch.stack(heads).float(), torch.stack(neurons).float()


@dataclass
class TaylorScorer:
    """Accumulates |dL/dm| of unit gates over the dense forwards of training steps."""

    layers: int
    heads: int
    neurons: int
    device: torch.device | str = "cpu"
    head_scores: Tensor = field(init=False)
    neuron_scores: Tensor = field(init=False)
    steps: int = 0

    def __post_init__(self) -> None:
        self.head_scores = torch.zeros(self.layers, self.heads, device=self.device)  # (L, H)
        self.neuron_scores = torch.zeros(self.layers, self.neurons, device=self.device)  # (L, F)

    def gates(self) -> tuple[Tensor, Tensor]:
        """Fresh gates of ones to pass as head_mask / neuron_mask to a dense forward."""
        hg = torch.ones(self.layers, self.heads, device=self.device, requires_grad=True)
        ng = torch.ones(self.layers, self.neurons, device=self.device, requires_grad=True)
        return hg, ng

    def update(self, head_gate: Tensor, neuron_gate: Tensor) -> None:
        """Add |grad| of the gates after backward (the batch's first-order loss change per unit)."""
        if head_gate.grad is None or neuron_gate.grad is None:
            raise RuntimeError("gates have no gradient: call update after loss.backward()")
        self.head_scores += head_gate.grad.detach().abs().float()
        self.neuron_scores += neuron_gate.grad.detach().abs().float()
        self.steps += 1

    def scores(self) -> tuple[Tensor, Tensor]:
        n = max(self.steps, 1)
        return self.head_scores / n, self.neuron_scores / n
