"""The quality floor: sizes whose agreement with the dense size is below the operator's `min_agreement` are never
picked by a latency budget or by overload degradation; a named size with its own floor runs denser while below it.

A size's agreement is what the shadow re-runs measured on this server's traffic once `agreement_min_samples`
inputs were compared at it; before that, the checkpoint's offline estimate: its headline metric at that level
relative to the dense level's (clipped to 1; linear between stored levels), or the level's stored `agreement`
when the checkpoint has one. A size with neither is not held back; the dense size always agrees. A size held back
gets no more budget traffic, so its figure stays as measured until requests ask for it by sparsity.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from dynsparse.errors import InputError
from service.codec import Endpoint
from service.planner import piecewise_linear
from service.shadow import DENSE, AgreementBook
from service.sizes import SizePolicy

_EPS = 1e-9


@dataclass(frozen=True)
class Floor:
    """Which sizes meet the operator's agreement floors (for the checkpoint's own task)."""

    task: Endpoint
    book: AgreementBook
    min_agreement: float | None = None
    by_name: Mapping[str, float] = field(default_factory=dict)  # named size -> its own floor
    min_samples: int = 50
    offline: Mapping[float, float] = field(default_factory=dict)  # stored level -> offline agreement estimate

    @classmethod
    def build(
        cls,
        task: Endpoint,
        book: AgreementBook,
        policy: SizePolicy,
        levels: Sequence[dict[str, Any]],
        metric: str | None,
        min_agreement: float | None,
        by_name: Mapping[str, float] | None,
        min_samples: int,
    ) -> "Floor":
        """The floors of the settings (a floor for a size name the server does not have raises `InputError`)."""
        unknown = sorted(set(by_name or {}) - set(policy.named))
        if unknown:
            raise InputError(f"min_agreement_sizes names {unknown}; the sizes are {sorted(policy.named)}")
        return cls(task, book, min_agreement, dict(by_name or {}), min_samples, offline_agreement(levels, metric))

    def estimate(self, sparsity: float) -> tuple[float | None, str | None]:
        """(agreement, its source: "shadow", "offline" or None when nothing is known) at `sparsity`."""
        mean, n = self.book.measured(self.task, sparsity)
        if sparsity <= DENSE + _EPS:
            return 1.0, "shadow" if n else "offline"
        if mean is not None and n >= self.min_samples:
            return mean, "shadow"
        if not self.offline:
            return None, None
        xs, ys = self._offline_curve
        return piecewise_linear(sparsity, xs, ys, extrapolate=False), "offline"

    @cached_property
    def _offline_curve(self) -> tuple[list[float], list[float]]:
        """The offline estimates as a curve, sorted once: every budgeted request asks at every candidate size."""
        xs = sorted(self.offline)
        return xs, [self.offline[x] for x in xs]

    def passes(self, sparsity: float, floor: float | None) -> bool:
        value, _ = self.estimate(sparsity)
        return floor is None or value is None or value >= floor - _EPS

    def allowed(self, candidates: Sequence[float]) -> list[float]:
        """The candidates a budget or overload may pick: those meeting `min_agreement` (the densest always)."""
        ok = [s for s in candidates if self.passes(s, self.min_agreement)]
        return ok or [min(candidates)]

    def for_name(self, name: str | None, sparsity: float, candidates: Sequence[float]) -> float:
        """The size a request for named size `name` (at `sparsity`) gets: itself, or while below its own floor the
        smallest denser candidate that meets it (the densest if none)."""
        floor = self.by_name.get(name or "")
        if floor is None or self.passes(sparsity, floor):
            return sparsity
        denser = [s for s in candidates if s < sparsity - _EPS and self.passes(s, floor)]
        return max(denser, default=min(candidates))


def offline_agreement(levels: Sequence[dict[str, Any]], metric: str | None) -> dict[float, float]:
    """Per stored level, its `agreement` column, else `metric` relative to the densest level's (at most 1)."""
    rows = sorted((r for r in levels if "sparsity" in r), key=lambda r: float(r["sparsity"]))
    rows = [r for r in rows if r.get("depth") in (None, rows[0].get("depth"))] if rows else []  # full depth only
    if rows and all(isinstance(r.get("agreement"), int | float) for r in rows):
        return {float(r["sparsity"]): float(r["agreement"]) for r in rows}
    if not rows or metric is None or not all(isinstance(r.get(metric), int | float) for r in rows):
        return {}
    dense = float(rows[0][metric])
    if dense <= 0:
        return {}
    return {float(r["sparsity"]): min(1.0, float(r[metric]) / dense) for r in rows}
