"""Measured latency per level, batch size and sequence length on the current device."""

import statistics
import time
from collections.abc import Callable, Iterable
from functools import partial

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dynsparse.modeling import ElasticModel


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(
    model: ElasticModel,
    sparsity: float,
    batch: int,
    seq_len: int,
    min_repeats: int = 5,
    min_seconds: float = 0.3,
    warmup: int = 2,
    depth: int | None = None,
    forward: Callable[[Tensor, Tensor], object] | None = None,
) -> float:
    """Median wall time (ms) of one forward at `sparsity` (and `depth`) on random tokens of shape (batch, seq_len).
    `forward(ids, mask)`: what to time instead of the model's eager forward (a server's traced graph of the size)."""
    device = next(model.parameters()).device
    seq_len = min(seq_len, model.shape.max_positions - 2)  # RoBERTa positions start at pad + 1
    ids = torch.randint(5, model.shape.vocab_size, (batch, seq_len), device=device)
    mask = torch.ones_like(ids)
    if forward is None:
        forward = partial(_eager, model, sparsity, depth)
    for _ in range(warmup):
        forward(ids, mask)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_seconds:
        _sync(device)
        t0 = time.perf_counter()
        forward(ids, mask)
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000)
        if len(times) >= 200:
            break
    return statistics.median(times)


def _eager(model: ElasticModel, sparsity: float, depth: int | None, ids: Tensor, mask: Tensor) -> object:
    return model(input_ids=ids, attention_mask=mask, sparsity=sparsity, depth=depth)


def profile_levels(
    model: ElasticModel,
    levels: Iterable[float],
    batch_sizes: Iterable[int],
    seq_lens: Iterable[int],
    progress: bool = True,
) -> list[dict[str, float]]:
    """Latency rows {sparsity, batch, seq_len, latency_ms} over the grid."""
    grid = [(s, b, t) for s in levels for b in batch_sizes for t in seq_lens]
    rows = []
    for s, b, t in tqdm(grid, desc="profiling", disable=not progress, unit="cfg"):
        rows.append({"sparsity": s, "batch": b, "seq_len": t, "latency_ms": round(measure_latency(model, s, b, t), 3)})
    return rows
