"""Importance estimators: one score per head and per FFN neuron, which fixes each layer's ordering.

- taylor: first-order Taylor estimate of the loss change when a unit is removed, |m * dL/dm| at m = 1,
  accumulated over steps (Michel et al. 2019; DynaBERT). Gates of ones scale each unit's output in a
  dense forward; their gradients are the estimate.
- learned: a gate per unit, trained with the task loss plus an L1 pull towards 0 (as CoFi's and
  Sheared-LLaMA's masks, without their hard-concrete sampling); a unit's score is its gate. The gates are
  folded into the units' output weights before rewiring, so the dense function does not change.
- magnitude: L2 norm of the unit's weights (no data needed).
- natural: the checkpoint's own order (a descending ramp), i.e. no reordering.
"""

from dataclasses import dataclass, field

import torch
from torch import Tensor

from dynsparse.data import group_rows
from dynsparse.layers import ElasticLayer
from dynsparse.modeling import ElasticModel


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
        self.add(head_gate.grad, neuron_gate.grad)

    def add(self, head_grad: Tensor, neuron_grad: Tensor) -> None:
        """Add one batch's gate gradients (L, H) and (L, F)."""
        self.head_scores += head_grad.detach().abs().float()
        self.neuron_scores += neuron_grad.detach().abs().float()
        self.steps += 1

    def scores(self) -> tuple[Tensor, Tensor]:
        n = max(self.steps, 1)
        return self.head_scores / n, self.neuron_scores / n

    def load(self, head: Tensor, neuron: Tensor, steps: int) -> None:
        self.head_scores, self.neuron_scores, self.steps = head.to(self.device), neuron.to(self.device), steps

    def fold(self, model: ElasticModel) -> None:
        """Nothing to fold: Taylor's gates are ones."""


@dataclass
class LearnedScorer:
    """Gates of the heads and neurons, trained with their own Adam on the task loss plus `l1` * mean |gate|."""

    layers: int
    heads: int
    neurons: int
    device: torch.device | str = "cpu"
    lr: float = 0.01
    l1: float = 0.05
    head_scores: Tensor = field(init=False)  # the gates themselves (saved and resumed like Taylor's sums)
    neuron_scores: Tensor = field(init=False)
    steps: int = 0

    def __post_init__(self) -> None:
        self.load(torch.ones(self.layers, self.heads), torch.ones(self.layers, self.neurons), 0)

    def load(self, head: Tensor, neuron: Tensor, steps: int) -> None:
        self.head_scores = head.detach().clone().to(self.device).requires_grad_(True)
        self.neuron_scores = neuron.detach().clone().to(self.device).requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.head_scores, self.neuron_scores], lr=self.lr)
        self.steps = steps

    def gates(self) -> tuple[Tensor, Tensor]:
        """The gates, to pass as head_mask / neuron_mask to a dense forward (their gradients train them)."""
        self.optimizer.zero_grad(set_to_none=True)
        return self.head_scores, self.neuron_scores

    def update(self, head_gate: Tensor, neuron_gate: Tensor) -> None:
        if head_gate.grad is None or neuron_gate.grad is None:
            raise RuntimeError("gates have no gradient: call update after loss.backward()")
        for g in (head_gate, neuron_gate):
            assert g.grad is not None
            g.grad += self.l1 * torch.sign(g.detach()) / g.shape[-1]  # d/dg of l1 * mean over the layer's |g|
        self.optimizer.step()
        with torch.no_grad():
            head_gate.clamp_(0.0, 2.0)
            neuron_gate.clamp_(0.0, 2.0)
        self.steps += 1

    def scores(self) -> tuple[Tensor, Tensor]:
        return self.head_scores.detach().abs(), self.neuron_scores.detach().abs()

    @torch.no_grad()
    def fold(self, model: ElasticModel) -> None:
        """Scale each unit's output rows by its gate, so the model computes without gates what it computed
        with them."""
        hd = model.shape.head_dim
        for layer, hg, ng in zip(model.layers, self.head_scores.detach(), self.neuron_scores.detach(), strict=True):
            assert isinstance(layer, ElasticLayer)
            layer.attn_out_weight_t.mul_(hg.repeat_interleave(hd).unsqueeze(1).to(layer.attn_out_weight_t))
            layer.ffn_out_weight_t.mul_(ng.unsqueeze(1).to(layer.ffn_out_weight_t))


Scorer = TaylorScorer | LearnedScorer


@dataclass
class LanguageScorer:
    """Taylor importance per language (the non-shared setting of Li et al.): gates per row of the batch, whose
    gradients are summed over each language's rows, so one mixed batch scores every language in it."""

    languages: list[str]
    layers: int
    heads: int
    neurons: int
    device: torch.device | str = "cpu"
    head_scores: Tensor = field(init=False)
    neuron_scores: Tensor = field(init=False)
    steps: Tensor = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.languages)
        self.head_scores = torch.zeros(n, self.layers, self.heads, device=self.device)  # (N, L, H)
        self.neuron_scores = torch.zeros(n, self.layers, self.neurons, device=self.device)  # (N, L, F)
        self.steps = torch.zeros(n, device=self.device)

    def gates(self, batch: int) -> tuple[Tensor, Tensor]:
        """Gates of ones per row, (B, L, H) and (B, L, F), for `head_mask` / `neuron_mask`."""
        hg = torch.ones(batch, self.layers, self.heads, device=self.device, requires_grad=True)
        ng = torch.ones(batch, self.layers, self.neurons, device=self.device, requires_grad=True)
        return hg, ng

    def update(self, head_gate: Tensor, neuron_gate: Tensor, languages: list[str]) -> tuple[Tensor, Tensor]:
        """Add each language's |summed gate gradient|; returns the whole batch's sums (L, H), (L, F), which are
        what the shared ordering's scorer adds."""
        if head_gate.grad is None or neuron_gate.grad is None:
            raise RuntimeError("gates have no gradient: call update after loss.backward()")
        gh, gn = head_gate.grad.detach().float(), neuron_gate.grad.detach().float()
        for lang, idx in group_rows(languages).items():
            i, rows = self.languages.index(lang), torch.tensor(idx, device=gh.device)
            self.head_scores[i] += gh[rows].sum(0).abs()
            self.neuron_scores[i] += gn[rows].sum(0).abs()
            self.steps[i] += 1
        return gh.sum(0), gn.sum(0)

    def scores(self) -> tuple[Tensor, Tensor]:
        n = self.steps.clamp_min(1)[:, None, None]
        return self.head_scores / n, self.neuron_scores / n
