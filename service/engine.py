"""The model on its device: batched tokenization and forward passes at one size, warm-up and profiling.

Every size is a prefix view of the same weights, so a batch at any sparsity costs no copy and no reload.
An `Engine` is not thread-safe: the `Batcher` runs it on its single worker thread, off the event loop; only
`structure` (pure bookkeeping, the batches' grouping key) is called on the loop, and the worker never calls
the model's own `structure` while serving, since every forward gets its structure passed in.
"""

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

import dynsparse
from dynsparse.errors import InputError
from dynsparse.masks import Structure
from dynsparse.modeling import ElasticModel
from dynsparse.profile import measure_latency
from dynsparse.tasks import predict_proba
from service.planner import LatencyProfile, ProfilePoint
from service.settings import Dtype, Settings

log = logging.getLogger(__name__)

Item = str | tuple[str, str]  # a text, or a text pair
Task = Literal["classify", "embed"]
LabelScore = tuple[int, float]  # (label id, probability of that label): one classify output
_MAX_STRUCTURES = 4096  # distinct sparsities remembered; clients may send any float


@dataclass(frozen=True)
class _Encoded:
    ids: list[int]
    types: list[int] | None


def _default_threads() -> int:
    """All usable cores but one: the event loop (HTTP, JSON, validation) runs beside the model, and an
    OpenMP thread that loses its core to it stalls the whole forward pass (seen: 1 ms -> 200 ms on 2 cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def pick_device(name: str | None) -> torch.device:
    """`name`, or cuda when available, else cpu; an unusable device raises `InputError`."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise InputError(f"device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r}: CUDA is not available on this machine")
    return device


def pick_dtype(name: Dtype, device: torch.device) -> torch.dtype:
    """auto: half precision on GPU (tensor cores), float32 on CPU (half is slow or missing there)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name == "float16" and device.type == "cpu":
        raise InputError("dtype float16 needs a GPU; use float32 or bfloat16 on cpu")
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


class Engine:
    """One loaded checkpoint that runs batches at any size.

    Example:
        >>> engine = Engine.load(Settings(checkpoint="runs/sst2"))
        >>> engine.run("classify", engine.structure(0.5), [["a text", ("a", "pair")]])
        [[(1, 0.93), (0, 0.71)]]
    """

    def __init__(self, model: ElasticModel, max_batch_size: int, max_tokens: int, dtype: torch.dtype) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.dtype = dtype
        if dtype != torch.float32:  # parameters only: the importance buffers keep full precision
            for p in model.parameters():
                p.data = p.data.to(dtype)
        self.max_batch_size = max_batch_size
        self.max_tokens = min(max_tokens, model.shape.max_positions - 2)  # RoBERTa positions start at pad + 1
        self.tokenizer: Any = model.tokenizer
        self.labels = [str(x) for x in model.meta.get("labels") or range(model.shape.num_labels)]
        lo, hi = model.meta.get("sparsity_range", [0.0, 0.9])
        self.trained_range = (float(lo), float(hi))
        self._structures: dict[float, Structure] = {}

    @classmethod
    def load(cls, settings: Settings) -> "Engine":
        """Load `settings.checkpoint` on the configured device and dtype (`InputError` if it cannot)."""
        device = pick_device(settings.device)
        dtype = pick_dtype(settings.dtype, device)
        torch.set_num_threads(settings.torch_threads or _default_threads())
        model = dynsparse.load(str(settings.checkpoint), device=str(device))
        return cls(model, settings.max_batch_size, settings.max_tokens, dtype)

    @property
    def device_name(self) -> str:
        """The device in words, with the dtype: latency profiles are only valid on the same one."""
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
        else:
            n = torch.get_num_threads()
            name = f"cpu ({n} thread{'s' if n > 1 else ''})"
        return f"{name}, {str(self.dtype).removeprefix('torch.')}"

    def structure(self, sparsity: float) -> Structure:
        """Per-layer (heads, neurons) at `sparsity`; batches are grouped by it (one prefix slice each)."""
        hit = self._structures.get(sparsity)
        if hit is None:
            hit = self._structures[sparsity] = self.model.structure(sparsity)
            if len(self._structures) > _MAX_STRUCTURES:  # bound memory against clients sending every float
                self._structures.clear()
                self.model.set_allocation(self.model.allocation)  # also empties the model's own cache
        return hit

    @torch.inference_mode()
    def run(self, task: Task, structure: Structure, groups: Sequence[Sequence[Item]]) -> list[list[Any] | InputError]:
        """Run every request in `groups` at one size: one tokenizer call, padded chunks of the max batch.

        Returns per group its outputs (classify: `LabelScore`s; embed: unit vectors), or the `InputError`
        that rejects that group alone (a text over the token limit): one bad request never fails others.
        """
        encoded = self._tokenize([item for group in groups for item in group])
        results: list[list[Any] | InputError] = []
        accepted: list[_Encoded] = []
        start = 0
        for group in groups:
            mine = encoded[start : start + len(group)]
            start += len(group)
            too_long = next((k for k, e in enumerate(mine) if len(e.ids) > self.max_tokens), None)
            if too_long is not None:
                results.append(InputError(f"inputs[{too_long}] is longer than {self.max_tokens} tokens"))
            else:
                results.append([])
                accepted.extend(mine)
        outputs = iter(self._forward(task, structure, accepted))
        for out, group in zip(results, groups, strict=True):
            if not isinstance(out, InputError):
                out.extend(next(outputs) for _ in group)
        return results

    def _tokenize(self, items: Sequence[Item]) -> list[_Encoded]:
        """Singles and pairs in one tokenizer call each (a call takes all-singles or all-pairs)."""
        out: list[_Encoded | None] = [None] * len(items)
        singles = [i for i, x in enumerate(items) if isinstance(x, str)]
        pairs = [i for i, x in enumerate(items) if not isinstance(x, str)]
        # one token over the limit is enough to reject a text: never tokenize a huge one whole
        limit: dict[str, Any] = {"truncation": True, "max_length": self.max_tokens + 1}
        if singles:
            enc = self.tokenizer([items[i] for i in singles], **limit)
            for k, i in enumerate(singles):
                out[i] = _Encoded(enc["input_ids"][k], None)
        if pairs:
            firsts, seconds = [items[i][0] for i in pairs], [items[i][1] for i in pairs]
            enc = self.tokenizer(firsts, seconds, **limit)
            types = enc.get("token_type_ids")
            for k, i in enumerate(pairs):
                out[i] = _Encoded(enc["input_ids"][k], types[k] if types is not None else None)
        return [e for e in out if e is not None]

    def _forward(self, task: Task, structure: Structure, encoded: list[_Encoded]) -> list[Any]:
        """Outputs in input order; chunks of similar length so little compute goes to padding."""
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
        out: list[Any] = [None] * len(encoded)
        for lo in range(0, len(order), self.max_batch_size):
            chunk = order[lo : lo + self.max_batch_size]
            for i, result in zip(chunk, self._run_chunk(task, structure, [encoded[i] for i in chunk]), strict=True):
                out[i] = result
        return out

    def _run_chunk(self, task: Task, structure: Structure, encoded: list[_Encoded]) -> list[Any]:
        ids, mask, types = self._collate(encoded)
        if task == "classify":
            logits = self.model(input_ids=ids, attention_mask=mask, token_type_ids=types, structure=structure).logits
            label, score = predict_proba(logits)  # (B,), (B,)
            return list(zip(label.tolist(), score.tolist(), strict=True))
        hidden = self.model.encode(ids, mask, types, structure=structure).float()  # (B, T, H)
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1): mean over real tokens only
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, H)
        return F.normalize(pooled, dim=-1).cpu().tolist()

    def _collate(self, encoded: list[_Encoded]) -> tuple[Tensor, Tensor, Tensor | None]:
        """Right-padded (B, T) tensors, moved to the device once per chunk (never per request)."""
        width = max(len(e.ids) for e in encoded)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([e.ids + [pad] * (width - len(e.ids)) for e in encoded])  # (B, T)
        mask = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in encoded])  # (B, T)
        types = None
        if any(e.types for e in encoded):  # text pairs: segment ids; single texts are all segment 0
            types = torch.tensor([(e.types or [0] * len(e.ids)) + [0] * (width - len(e.ids)) for e in encoded])
            types = types.to(self.device, non_blocking=True)
        return ids.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True), types

    def warmup(self, sparsities: Sequence[float]) -> None:
        """One small batch per size and task, so first requests pay no lazy initialisation."""
        for s in sparsities:
            self.run("classify", self.structure(s), [["warm up"], [("warm", "up")]])
            self.run("embed", self.structure(s), [["warm up"]])

    def profile(self, levels: Sequence[float], batches: Sequence[int], seq_lens: Sequence[int]) -> LatencyProfile:
        """Measure median forward latency on this device over the grid (kept short: a startup cost)."""
        lens = sorted({min(t, self.max_tokens) for t in seq_lens})
        points = tuple(
            ProfilePoint(
                s,
                b,
                t,
                round(measure_latency(self.model, s, b, t, min_repeats=3, min_seconds=0.1, warmup=1), 4),
            )
            for s in levels
            for b in batches
            for t in lens
        )
        return LatencyProfile(self.device_name, points)
