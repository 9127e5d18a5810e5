"""Shadow agreement: what each size costs in quality on this server's own traffic.

A share (`shadow_fraction`) of the requests served below dense is re-run at the dense size (sparsity 0, every
layer: the same weights, a free teacher) after its response, in the batcher's idle lane (`service.lane`): only
when no real request waits, in small batches, dropped first under load. The served outputs are kept from the
request itself (for tags, their distributions), so a shadow costs one dense forward of its first
`shadow_inputs` inputs. The comparison (`dynsparse.agreement`) is recorded per task and served size:

    classify  label   share of inputs whose label is the dense label
    tokens    top1    share of tokens whose tag is the dense tag (and kl: mean KL(dense || served) per token)
    answer    span    share of answers with the dense answer's span
    embed     cosine  mean cosine to the dense embedding

Only requests at full depth with the shared ordering are shadowed (their size is one sparsity); the figures are
running means since the server started.
"""

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge

from dynsparse.agreement import cosine_to_dense, label_agreement, span_agreement, token_agreement
from service.batcher import Batcher
from service.codec import Endpoint
from service.jobs import Job
from service.metrics import size_label
from service.planner import Planner

log = logging.getLogger(__name__)
DENSE = 0.0
MEASURE: dict[Endpoint, str] = {"classify": "label", "tokens": "top1", "answer": "span", "embed": "cosine"}


@dataclass
class Tally:
    """Running sums of one (task, size)."""

    samples: int = 0
    sums: dict[str, float] = field(default_factory=dict)

    def mean(self, measure: str) -> float | None:
        return self.sums[measure] / self.samples if self.samples and measure in self.sums else None


class AgreementBook:
    """Per task and served size, the shadow comparisons so far; also as Prometheus metrics in `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._tallies: dict[tuple[Endpoint, str], Tally] = {}
        r = registry or CollectorRegistry()
        self.samples = Counter(
            "dynsparse_shadow_samples",
            "Inputs compared with the dense size (shadow re-runs)",
            ["task", "size"],
            registry=r,
        )
        self.agreement = Gauge(
            "dynsparse_shadow_agreement",
            "Agreement with the dense size so far (label, top1, span: shares; cosine: mean; kl: mean nats per token)",
            ["task", "size", "measure"],
            registry=r,
        )
        self.jobs = Counter("dynsparse_shadow_jobs", "Shadow re-runs by outcome", ["outcome"], registry=r)

    def record(self, task: Endpoint, sparsity: float, values: dict[str, list[float]]) -> None:
        """Add one comparison's per-input values (every measure has one value per input)."""
        size = size_label(sparsity)
        tally = self._tallies.setdefault((task, size), Tally())
        n = len(next(iter(values.values()), []))
        tally.samples += n
        for measure, vs in values.items():
            tally.sums[measure] = tally.sums.get(measure, 0.0) + float(sum(vs))
            self.agreement.labels(task, size, measure).set(tally.sums[measure] / tally.samples)
        self.samples.labels(task, size).inc(n)

    def measured(self, task: Endpoint, sparsity: float) -> tuple[float | None, int]:
        """(mean of the task's main measure or None, samples) at the served size of `sparsity`."""
        tally = self._tallies.get((task, size_label(sparsity)))
        if tally is None:
            return (1.0, 0) if sparsity <= DENSE else (None, 0)
        return tally.mean(MEASURE[task]), tally.samples

    def columns(self, task: Endpoint, sparsity: float) -> dict[str, Any]:
        """The size table's live columns: every measure's mean and the samples behind them."""
        tally = self._tallies.get((task, size_label(sparsity)), Tally())
        out: dict[str, Any] = {f"shadow_{m}": round(tally.sums[m] / tally.samples, 4) for m in tally.sums}
        return {**out, "shadow_samples": tally.samples}


def compare(
    task: Endpoint,
    served: Sequence[Any],
    served_rows: Sequence[Any] | None,
    dense: Sequence[Any],
    dense_rows: Sequence[Any] | None,
) -> dict[str, list[float]]:
    """Per input, the agreement of the served outputs with the dense ones (see the module's table)."""
    if task == "classify":  # (label id, probability)
        return {"label": label_agreement(_t([o[0] for o in served]), _t([o[0] for o in dense])).tolist()}
    if task == "embed":
        return {"cosine": cosine_to_dense(_t(served), _t(dense)).tolist()}
    if task == "answer":
        spans = [_t([(a.start, a.end) for a in outs]) for outs in (served, dense)]
        return {"span": span_agreement(*spans).tolist()}
    assert served_rows is not None and dense_rows is not None  # tokens: one row per input, (labels, scores, logp)
    kl, top1 = [], []
    for s, d in zip(served_rows, dense_rows, strict=True):
        inner = slice(1, -1) if len(s[0][2]) > 2 else slice(None)  # the tokenizer's [CLS]/[SEP] ends were never tagged
        k, t = token_agreement(s[0][2][None, inner], d[0][2][None, inner])
        kl.append(float(k[0]))
        top1.append(float(t[0]))
    return {"top1": top1, "kl": kl}


def _t(values: Any) -> torch.Tensor:
    return torch.tensor(values)


class Shadow:
    """Picks the requests to shadow and runs their dense re-runs in the batcher's idle lane.

    Example:
        >>> shadow = Shadow(0.02, 4, book, batcher, engine.structure, planner, timeout_s=30)
        >>> if shadow.wants(job.sparsity, full_depth=True, language=None): job.keep_rows = task == "tokens"
        >>> shadow.follow("classify", job, outputs, seq_len)      # after the request is answered
    """

    def __init__(
        self,
        fraction: float,
        inputs: int,
        book: AgreementBook,
        batcher: Batcher,
        structure: Any,
        planner: Planner,
        timeout_s: float,
        seed: int | None = None,
    ) -> None:
        self.fraction, self.inputs, self.book, self.batcher = fraction, inputs, book, batcher
        self._structure, self._planner, self.timeout_s = structure, planner, timeout_s
        self._rng = random.Random(seed)
        self._pending: set[asyncio.Task[None]] = set()
        batcher.lane.on_drop = lambda reason: book.jobs.labels(f"dropped_{reason}").inc()

    def wants(self, sparsity: float, full_depth: bool, language: str | None) -> bool:
        """Whether a request served at `sparsity` is shadowed (drawn at random with `fraction`)."""
        below_dense = sparsity > DENSE + 1e-9
        return (
            self.fraction > 0
            and below_dense
            and full_depth
            and language is None
            and (self._rng.random() < self.fraction)
        )

    def follow(self, task: Endpoint, job: Job, outputs: Sequence[Any], seq_len: int) -> None:
        """Queue the dense re-run of `job`'s first inputs (answered with `outputs`); compare when it is done."""
        k = min(len(job.items), self.inputs)
        dense = Job(
            task,
            job.items[:k],
            DENSE,
            self._structure(DENSE),
            deadline=time.monotonic() + self.timeout_s,
            cost_ms=self._planner.cost_ms(DENSE, k, seq_len),
            overhead_ms=self._planner.overhead_ms(DENSE, seq_len),  # while it runs, budgets plan for all of it
            keep_rows=job.keep_rows,
        )
        if not self.batcher.submit_idle(dense):
            self.book.jobs.labels("refused").inc()  # the lane is full of older ones, or the server is busy
            return
        rows = job.rows[:k] if job.rows is not None else None
        pending = asyncio.ensure_future(self._compare(task, job.sparsity, list(outputs[:k]), rows, dense))
        self._pending.add(pending)
        pending.add_done_callback(self._pending.discard)

    async def _compare(self, task: Endpoint, sparsity: float, served: list[Any], rows: Any, dense: Job) -> None:
        try:
            reference = await dense.future
        except Exception:  # dropped (expired, pushed out, shutdown) or failed: nothing to compare
            return
        try:
            self.book.record(task, sparsity, compare(task, served, rows, reference, dense.rows))
            self.book.jobs.labels("compared").inc()
        except Exception:  # a comparison bug must never reach a client: log it and go on
            log.exception("shadow comparison failed (%s at sparsity %s)", task, sparsity)
            self.book.jobs.labels("failed").inc()
