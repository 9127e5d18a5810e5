"""Nested allocation: how many heads and FFN neurons each layer keeps at a sparsity s.

Pure functions of (s, ordering). Units kept at s are the top of each layer's ordering, so a larger s
always keeps a subset: `kept(s2) ⊆ kept(s1)` for `s1 < s2`. Counts are all a rewired model needs,
because its units are stored in ordering order (kept units are a prefix).
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

Structure = tuple[tuple[int, int], ...]  # per layer: (heads kept, neurons kept)


def layers_kept(structure: Structure) -> int:
    """Layers a structure runs: depth sets the others to (0, 0)."""
    return sum(1 for heads, neurons in structure if heads or neurons)


def keep_count(total: int, sparsity: float, minimum: int = 1) -> int:
    """Units kept out of `total` at `sparsity`, rounded half up; non-increasing in sparsity."""
    return max(minimum, min(total, math.floor((1.0 - sparsity) * total + 0.5)))


def uniform_structure(sparsity: float, layers: int, heads: int, neurons: int) -> Structure:
    """Every layer keeps the same fraction of its heads and of its neurons (DynaBERT's width rule)."""
    kept = (keep_count(heads, sparsity), keep_count(neurons, sparsity))
    return (kept,) * layers


@dataclass(frozen=True)
class GlobalRanking:
    """One ranking over every unit of every layer; each size keeps a prefix of it."""

    layer: Tensor  # (N,) layer of each ranked unit
    is_head: Tensor  # (N,) True for heads, False for neurons
    cum_cost: Tensor  # (N,) parameters kept when the ranking is cut after this unit
    forced: int  # the first `forced` units (each layer's top head and neuron) are always kept
    total_cost: float
    layers: int


def rank_globally(head_scores: Tensor, neuron_scores: Tensor, head_cost: int, neuron_cost: int) -> GlobalRanking:
    """Rank all units by importance per parameter, each score type normalised to sum 1 over the model.

    Scores are assumed sorted descending within each layer (a rewired model's invariant); the stable
    sort keeps that order among equal ratios, so every layer's kept units stay a prefix.
    """
    layers, heads = head_scores.shape  # (L, H)
    neurons = neuron_scores.shape[1]  # (L, F)
    h = head_scores.double().clamp_min(0) / head_scores.double().clamp_min(0).sum().clamp_min(1e-12) / head_cost
    n = neuron_scores.double().clamp_min(0) / neuron_scores.double().clamp_min(0).sum().clamp_min(1e-12)
    n = n / neuron_cost
    ratio = torch.cat([h.flatten(), n.flatten()])  # (L*H + L*F,)
    layer = torch.cat([torch.arange(layers).repeat_interleave(heads), torch.arange(layers).repeat_interleave(neurons)])
    is_head = torch.cat([torch.ones(layers * heads, dtype=torch.bool), torch.zeros(layers * neurons, dtype=torch.bool)])
    pos = torch.cat([torch.arange(heads).repeat(layers), torch.arange(neurons).repeat(layers)])
    ratio = torch.where(pos == 0, torch.full_like(ratio, math.inf), ratio)  # keep >= 1 head and neuron per layer
    order = torch.sort(-ratio, stable=True).indices
    cost = torch.where(is_head, float(head_cost), float(neuron_cost)).double()
    return GlobalRanking(
        layer=layer[order],
        is_head=is_head[order],
        cum_cost=cost[order].cumsum(0),
        forced=2 * layers,
        total_cost=float(cost.sum()),
        layers=layers,
    )


def global_structure(sparsity: float, ranking: GlobalRanking) -> Structure:
    """Keep the longest prefix of the global ranking that fits (1 - s) of the prunable parameters."""
    budget = torch.tensor((1.0 - sparsity) * ranking.total_cost + 1e-6, dtype=torch.float64)
    cut = max(int(torch.searchsorted(ranking.cum_cost, budget, right=True)), ranking.forced)
    layer, is_head = ranking.layer[:cut], ranking.is_head[:cut]
    heads = torch.bincount(layer[is_head], minlength=ranking.layers)
    neurons = torch.bincount(layer[~is_head], minlength=ranking.layers)
    return tuple((int(a), int(b)) for a, b in zip(heads, neurons, strict=True))


def prefix_masks(structure: Structure, heads: int, neurons: int) -> tuple[Tensor, Tensor]:
    """0/1 masks (L, H) and (L, F) that keep each layer's prefix: the masked twin of a sliced forward."""
    kept_h = torch.tensor([h for h, _ in structure]).unsqueeze(1)  # (L, 1)
    kept_n = torch.tensor([n for _, n in structure]).unsqueeze(1)
    return (torch.arange(heads) < kept_h).float(), (torch.arange(neurons) < kept_n).float()


def nested_mask(scores: Tensor, keep: Tensor) -> Tensor:
    """Top-`keep[l]` units of each layer by score; one shared ranking makes smaller masks subsets of larger ones."""
    order = scores.argsort(dim=-1, descending=True, stable=True)  # (L, U)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(scores.shape[-1]).expand_as(order))
    return rank < keep.unsqueeze(-1)  # (L, U)
