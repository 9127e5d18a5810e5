"""The model on its device: batched tokenization and forward passes at one size, warm-up and profiling.

Every size is a prefix view of the same weights, so a batch at any sparsity costs no copy and no reload. On CPU
each size runs as a graph traced over those weights (`dynsparse.graphs`), which keeps the GIL free for the loop.
An `Engine` is not thread-safe: the `Batcher` runs it on its single worker thread, off the event loop; only
`structure`, `check_depth` and `check_language` (pure bookkeeping: the batches' grouping key and its checks) are
called on the loop, and the worker never calls the model's own `structure` while serving, since every forward
gets its structure passed in (a per-language forward only reads the model's cache of that language's rows).
"""

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor

import dynsparse
from dynsparse.errors import InputError
from dynsparse.graphs import TRACING_SUPPORTED, SizeGraphs
from dynsparse.masks import Structure
from dynsparse.modeling import ElasticModel
from dynsparse.precision import cast_model, pick_dtype
from dynsparse.profile import measure_latency
from service.codec import (
    Codec,
    Encoded,
    Endpoint,
    Item,
    LabelScore,
    Row,
    endpoint_of,
    make_codecs,
    served_endpoints,
    warm_up_item,
)
from service.planner import LatencyProfile, ProfilePoint
from service.settings import Settings
from service.threads import ThreadPlan

__all__ = ["Engine", "Item", "LabelScore", "Endpoint", "default_batch_wait_ms", "pick_device", "pick_dtype"]

log = logging.getLogger(__name__)

_MAX_STRUCTURES = 4096  # distinct (sparsity, depth, language) remembered; clients may send any float


def _default_threads() -> int:
    """Every usable core. Leaving one to the event loop (HTTP, JSON, validation) cost more than it saved: on 2
    cores, 2 threads against 1 served 5-40% more requests per second with a lower p99 at 1, 32 and 64 clients
    (measured with both a light and a heavy load generator on the same cores); the loop needs a few percent of a
    core per 100 requests/s."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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


def default_batch_wait_ms(device: torch.device) -> float:
    """How long an idle worker waits for a batch to fill. On a GPU a batch of 8 costs about what one input does,
    so 2 ms of waiting buys throughput; on a CPU each row costs about the same at any batch size and the queue
    fills by itself while the worker is busy, so waiting only adds latency (measured on 2 cores: 11.3 vs 13.7
    ms p50 at 1 client, and no throughput gained at 8 or 32)."""
    return 2.0 if device.type == "cuda" else 0.0


@dataclass
class RunStats:
    """What the last `Engine.run` read: tokens per request (its rows' ids, specials included) and the time the
    tokenizer took for the whole batch (shared by its requests)."""

    tokens: list[int] = field(default_factory=list)
    tokenize_ms: float = 0.0


class Engine:
    """One loaded checkpoint that runs batches at any size.

    Example:
        >>> engine = Engine.load(Settings(checkpoint="runs/sst2"))
        >>> engine.run("classify", engine.structure(0.5), [["a text", ("a", "pair")]])
        [[(1, 0.93), (0, 0.71)]]
        >>> engine.run("classify", engine.structure(0.5, depth=6, language="de"), [["ein Text"]], language="de")
        [[(1, 0.88)]]
    """

    def __init__(
        self,
        model: ElasticModel,
        max_batch_size: int,
        max_tokens: int,
        dtype: torch.dtype,
        max_rows: int = 64,
        threads: ThreadPlan | None = None,
        traced: bool = False,
    ) -> None:
        self.model = model.eval()
        self.threads = threads  # None: torch's thread count as it is (always on CUDA)
        self.graphs = SizeGraphs(model) if traced else None  # None: eager forwards
        self.device = next(model.parameters()).device
        self.dtype = dtype
        cast_model(model, dtype)  # parameters only: the importance buffers keep full precision
        self.max_batch_size = max_batch_size
        self.max_tokens = min(max_tokens, model.shape.max_positions - 2)  # RoBERTa positions start at pad + 1
        self.max_rows = max_rows  # model rows per request: a long QA context takes one per window
        self.tokenizer: Any = model.tokenizer
        self.labels = list(model.meta.labels or ()) or [str(x) for x in range(model.shape.num_labels)]
        lo, hi = model.meta.sparsity_range
        self.trained_range = (float(lo), float(hi))
        self.task: str = model.task  # what the checkpoint was trained for (a transformers pipeline name)
        self.endpoints = served_endpoints(model.task)  # the endpoints it serves, its own first
        trained_len = model.meta.max_seq_length
        # QA windows as long as in training (positions past it were never trained), at most the token limit
        self.window = min(self.max_tokens, trained_len) if trained_len is not None else self.max_tokens
        self._codecs = make_codecs(self.endpoints, self.tokenizer, self.max_tokens, self.labels, self.window)
        self._structures: dict[tuple[float, int | None, str | None], Structure] = {}
        self.last_run = RunStats()  # read by the batcher after each run, on the loop (the worker is idle then)

    @property
    def endpoint(self) -> Endpoint:
        """The endpoint of the checkpoint's own task."""
        return endpoint_of(self.task)

    @classmethod
    def load(cls, settings: Settings) -> "Engine":
        """Load `settings.checkpoint` on the configured device and dtype (`InputError` if it cannot)."""
        device = pick_device(settings.device)
        dtype = pick_dtype(settings.dtype, device)
        threads = settings.torch_threads or _default_threads()
        torch.set_num_threads(threads)
        model = dynsparse.load(str(settings.checkpoint), device=str(device))
        cpu = device.type == "cpu"
        plan = ThreadPlan(threads, settings.single_thread_below, model.shape) if cpu else None
        traced = settings.traced_graphs if settings.traced_graphs is not None else cpu and TRACING_SUPPORTED
        return cls(model, settings.max_batch_size, settings.max_tokens, dtype, settings.max_inputs, plan, traced)

    @property
    def device_name(self) -> str:
        """The device in words, with the dtype: latency profiles are only valid on the same one."""
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
        else:
            n = self.threads.threads if self.threads is not None else torch.get_num_threads()
            name = f"cpu ({n} thread{'s' if n > 1 else ''})"
        return f"{name}, {str(self.dtype).removeprefix('torch.')}"

    @property
    def layers(self) -> int:
        """The model's layer count: the largest depth."""
        return self.model.shape.layers

    @property
    def languages(self) -> list[str]:
        """Languages with their own ordering (the non-shared setting); empty: one shared ordering."""
        return list(self.model.languages)

    def check_depth(self, depth: int | None) -> int | None:
        """`depth` as the model takes it (None: every layer); an `InputError` outside 1 ... layers."""
        return self.model.check_depth(depth)

    def check_language(self, language: str | None) -> str | None:
        """The ordering that serves `language`: itself on a checkpoint with per-language orderings (an
        `InputError` naming them if it has none for it); None (the shared ordering) on one without."""
        return self.model.check_language(language) if self.model.languages else None

    def structure(self, sparsity: float, depth: int | None = None, language: str | None = None) -> Structure:
        """Per-layer (heads, neurons) at `sparsity`, `depth` layers (None: all) and `language`'s ordering (None:
        the shared one), as `check_depth` and `check_language` return them; batches are grouped by it."""
        key = (sparsity, depth, language)
        hit = self._structures.get(key)
        if hit is None:
            if len(self._structures) >= _MAX_STRUCTURES:  # bound memory against clients sending every float
                self._structures.clear()  # (the model bounds its own cache: never reset it from here, as the
                # worker may be reading the model's per-language rows meanwhile)
            hit = self._structures[key] = self.model.structure(sparsity, depth, language)
        return hit

    @torch.inference_mode()
    def run(
        self, task: Endpoint, structure: Structure, groups: Sequence[Sequence[Item]], language: str | None = None
    ) -> list[list[Any] | InputError]:
        """Run every request in `groups` at one size (`structure`, from `self.structure`) and with `language`'s
        ordering (None: the shared one): one tokenizer call, padded chunks of the max batch.

        Returns per group its outputs (see `codec`: classify `LabelScore`s, embed unit vectors, tokens lists of
        `EntitySpan`s, answer `AnswerSpan`s), or the `InputError` that rejects that group alone (a text over the
        token limit): one bad request never fails others.
        """
        return self.run_rows(task, structure, groups, language)[0]

    @torch.inference_mode()
    def run_rows(
        self, task: Endpoint, structure: Structure, groups: Sequence[Sequence[Item]], language: str | None = None
    ) -> tuple[list[list[Any] | InputError], list[list[Any] | None]]:
        """`run`, and per group each item's row outputs before decoding (the codec's `reduce`; None for a rejected
        group): what shadow agreement compares with the dense size's (token tags need their distributions)."""
        codec = self._codecs[task]
        began = time.perf_counter()
        encoded = codec.encode([item for group in groups for item in group])
        tokenize_ms = (time.perf_counter() - began) * 1000
        results: list[list[Any] | InputError] = []
        tokens: list[int] = []
        accepted: list[Encoded] = []
        start = 0
        for group in groups:
            mine = encoded[start : start + len(group)]
            start += len(group)
            error = reject(mine, self.max_tokens, self.max_rows, self.window)
            results.append(error if error is not None else [])
            tokens.append(sum(len(r.ids) for e in mine if isinstance(e, Encoded) for r in e.rows))
            if error is None:
                accepted.extend(e for e in mine if isinstance(e, Encoded))
        outputs = iter(self._forward(codec, structure, language, [row for e in accepted for row in e.rows]))
        item_rows = [[next(outputs) for _ in e.rows] for e in accepted]
        decoded = iter([codec.decode(e, r) for e, r in zip(accepted, item_rows, strict=True)])
        rows = iter(item_rows)
        kept: list[list[Any] | None] = []
        for out, group in zip(results, groups, strict=True):
            if isinstance(out, InputError):
                kept.append(None)
                continue
            out.extend(next(decoded) for _ in group)
            kept.append([next(rows) for _ in group])
        self.last_run = RunStats(tokens, tokenize_ms)
        return results, kept

    def _forward(self, codec: Codec, structure: Structure, language: str | None, rows: list[Row]) -> list[Any]:
        """Outputs in row order; chunks of similar length so little compute goes to padding."""
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))
        out: list[Any] = [None] * len(rows)
        for lo in range(0, len(order), self.max_batch_size):
            chunk = order[lo : lo + self.max_batch_size]
            results = self._run_chunk(codec, structure, language, [rows[i] for i in chunk])
            for i, result in zip(chunk, results, strict=True):
                out[i] = result
        return out

    def _run_chunk(self, codec: Codec, structure: Structure, language: str | None, rows: list[Row]) -> list[Any]:
        ids, mask, types = collate(rows, self.tokenizer.pad_token_id or 0, self.device)
        if self.threads is not None:
            self.threads.apply(sum(len(r.ids) for r in rows), structure)
        if self.graphs is not None:
            out = self.graphs.run(ids, mask, types, structure, language, head=codec.uses_head)
        elif codec.uses_head:
            out = self.model(ids, mask, types, structure=structure, language=language, unpad=True).logits
        else:
            out = self.model.encode(ids, mask, types, structure=structure, language=language, unpad=True)  # (B, T, H)
        return codec.reduce(out, mask)

    def warmup(self, sparsities: Sequence[float]) -> None:
        """One small batch per size and task (and its traced graphs), so first requests pay no lazy initialisation."""
        for s in sparsities:
            if self.graphs is not None:  # traced and optimised here, not on a request
                for head in {self._codecs[e].uses_head for e in self.endpoints}:  # e.g. classify and embed
                    self.graphs.warm(self.structure(s), head=head)
            for endpoint in self.endpoints:
                self.run(endpoint, self.structure(s), [[warm_up_item(endpoint)]])

    def profile(self, levels: Sequence[float], batches: Sequence[int], seq_lens: Sequence[int]) -> LatencyProfile:
        """Measure median forward latency on this device over the grid (kept short: a startup cost)."""
        lens = sorted({min(t, self.max_tokens) for t in seq_lens})
        points = tuple(ProfilePoint(s, b, t, self._measure(s, b, t)) for s in levels for b in batches for t in lens)
        return LatencyProfile(self.device_name, points)

    def _measure(self, sparsity: float, batch: int, seq_len: int) -> float:
        """One profile point, on the thread count a batch of that shape is served with."""
        structure = self.structure(sparsity)
        if self.threads is not None:
            self.threads.apply(batch * seq_len, structure)
        head = self._codecs[self.endpoint].uses_head  # below: the traced graphs when requests take them
        forward = None if self.graphs is None else partial(self.graphs.run, types=None, structure=structure, head=head)
        ms = measure_latency(
            self.model, sparsity, batch, seq_len, min_repeats=3, min_seconds=0.1, warmup=1, forward=forward
        )
        return round(ms, 4)


def reject(encoded: Sequence[Encoded | InputError], max_tokens: int, max_rows: int, window: int) -> InputError | None:
    """Why one request cannot run: an input the codec refused, one over the token limit, too many windows."""
    for k, e in enumerate(encoded):
        if isinstance(e, InputError):
            return InputError(f"inputs[{k}] {e}")
        if any(len(row.ids) > max_tokens for row in e.rows):
            return InputError(f"inputs[{k}] is longer than {max_tokens} tokens")
    rows = sum(len(e.rows) for e in encoded if isinstance(e, Encoded))
    if rows > max_rows:  # only long contexts make several rows: one per window
        return InputError(f"the contexts make {rows} windows of {window} tokens; at most {max_rows} per request")
    return None


def collate(rows: list[Row], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor | None]:
    """Right-padded (B, T) ids, mask and (text pairs only) segment ids, moved to `device` once per chunk (never
    per request)."""
    width = max(len(r.ids) for r in rows)
    ids = torch.tensor([r.ids + [pad_id] * (width - len(r.ids)) for r in rows])  # (B, T)
    mask = torch.tensor([[1] * len(r.ids) + [0] * (width - len(r.ids)) for r in rows])  # (B, T)
    types = None
    if any(r.types for r in rows):  # text pairs: segment ids; single texts are all segment 0
        types = to_device(
            torch.tensor([(r.types or [0] * len(r.ids)) + [0] * (width - len(r.ids)) for r in rows]), device
        )
    return to_device(ids, device), to_device(mask, device), types


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """On a GPU, through page-locked memory: the copy runs asynchronously instead of staging first."""
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)
