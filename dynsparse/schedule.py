"""Deterministic, stateless schedules: which sizes a step trains and which examples a micro-step reads.

Both are pure functions of (seed, step), so a resumed run and every distributed rank agree without
carrying generator state around.
"""

import math

import torch
from torch import Tensor


def sample_sizes(step: int, seed: int, min_sparsity: float, max_sparsity: float, count: int) -> list[float]:
    """The sandwich rule: the densest and the smallest size, plus `count - 2` random ones in between."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    rand = torch.rand(max(count - 2, 0), generator=g) * (max_sparsity - min_sparsity) + min_sparsity
    return [min_sparsity, max_sparsity, *(round(float(s), 4) for s in rand)]


def sample_depths(step: int, seed: int, min_depth: int, layers: int, count: int) -> list[int | None]:
    """A depth per sampled size: all layers with the densest, `min_depth` with the smallest, random ones between
    (None everywhere when depth is not elastic)."""
    if not 0 < min_depth < layers:
        return [None] * count
    g = torch.Generator().manual_seed(seed * 7_000_003 + step)
    rand = torch.randint(min_depth, layers + 1, (max(count - 2, 0),), generator=g)
    return [None, min_depth, *(None if int(d) == layers else int(d) for d in rand)]


def batch_indices(micro_step: int, seed: int, num_examples: int, batch_size: int) -> Tensor:
    """Example indices of a global micro-step: a fresh seeded permutation per epoch, last batch kept."""
    per_epoch = math.ceil(num_examples / batch_size)
    epoch, b = divmod(micro_step, per_epoch)
    perm = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed + epoch))
    return perm[b * batch_size : (b + 1) * batch_size]


def total_steps(max_steps: int, epochs: float, num_examples: int, batch_size: int, accumulation: int) -> int:
    if max_steps > 0:
        return max_steps
    return max(1, math.ceil(epochs * math.ceil(num_examples / batch_size) / accumulation))
