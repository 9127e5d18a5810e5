"""Which sparsity serves a request: the allowed range, named sizes, the operator's grid and the default.

A request names at most one of `sparsity`, `size` or `latency_budget_ms`; this module turns the first two
(or the operator's default) into a sparsity, and leaves a budget to the planner.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from dynsparse.errors import InputError
from dynsparse.levels import default_levels
from service.errors import BadInput
from service.settings import Settings

log = logging.getLogger(__name__)
_EPS = 1e-9  # float slack when comparing sparsities from JSON


@dataclass(frozen=True)
class Choice:
    """A resolved size selector: a sparsity, or a latency budget for the planner to turn into one."""

    sparsity: float | None
    budget_ms: float | None = None
    name: str | None = None  # the named size asked for, if any
    exact: bool = False  # the client asked for this very sparsity: never degraded under load


@dataclass(frozen=True)
class SizePolicy:
    """The operator's size rules, resolved against the checkpoint's trained range."""

    low: float  # densest allowed
    high: float  # smallest allowed
    named: Mapping[str, float]
    grid: tuple[float, ...] | None = None
    default: Choice = field(default_factory=lambda: Choice(0.0))

    @classmethod
    def build(cls, settings: Settings, trained: tuple[float, float]) -> "SizePolicy":
        """Apply `settings` to the trained range; an inconsistent configuration raises `InputError`."""
        low = trained[0] if settings.min_sparsity is None else settings.min_sparsity
        high = trained[1] if settings.max_sparsity is None else settings.max_sparsity
        if low < trained[0] - _EPS or high > trained[1] + _EPS:
            log.warning("serving sparsities [%s, %s] outside the trained range %s", low, high, list(trained))
        grid = None
        if settings.levels is not None:
            grid = tuple(s for s in settings.levels if low - _EPS <= s <= high + _EPS)
            if not grid:
                raise InputError(f"levels {settings.levels}: none lies in the allowed range [{low}, {high}]")
            low = grid[0]  # nothing is denser than the grid's densest level
        if low > high:
            raise InputError(f"allowed sparsity range is empty: [{low}, {high}]")
        policy = cls(low, high, {}, grid)  # names and the default are checked against this range next
        wanted = settings.sizes or policy._default_names()
        policy = replace(policy, named={k: policy._in_range(v, f"size {k!r}") for k, v in wanted.items()})
        return replace(policy, default=policy._default_choice(settings))

    def _default_names(self) -> dict[str, float]:
        return {"dense": self.low, "medium": round((self.low + self.high) / 2, 4), "small": self.high}

    def _default_choice(self, settings: Settings) -> Choice:
        if settings.default_latency_budget_ms is not None:
            return Choice(None, budget_ms=settings.default_latency_budget_ms)
        name = settings.default_size
        if name is None:
            return Choice(self.low)
        if name in self.named:
            return Choice(self.named[name], name=name)
        try:
            value = float(name)
        except ValueError:
            raise InputError(
                f"default_size {name!r} is neither a size name {sorted(self.named)} nor a number"
            ) from None
        return Choice(self._in_range(value, "default_size"))

    def _in_range(self, sparsity: float, what: str) -> float:
        if not self.low - _EPS <= sparsity <= self.high + _EPS:
            raise InputError(f"{what}: sparsity {sparsity} is outside the allowed range [{self.low}, {self.high}]")
        return self.snap(sparsity)

    def snap(self, sparsity: float) -> float:
        """The sparsity that serves `sparsity`: itself, or with a grid the next denser level."""
        if self.grid is None:
            return sparsity
        return max((s for s in self.grid if s <= sparsity + _EPS), default=self.grid[0])

    @property
    def smallest(self) -> float:
        """The smallest (fastest) allowed size: where overload degrades to and where tight budgets land."""
        return self.snap(self.high)

    def candidates(self) -> list[float]:
        """Sizes the planner chooses from and the sizes table lists, densest first."""
        if self.grid is not None:
            return list(self.grid)
        inner = [s for s in default_levels(self.high) if self.low + _EPS < s < self.high - _EPS]
        return sorted({self.low, *inner, self.high})

    def select(self, sparsity: float | None, size: str | None, budget_ms: float | None) -> Choice:
        """The choice for one request's selectors (at most one is set); bad values raise `BadInput`."""
        if sparsity is not None:
            if not self.low - _EPS <= sparsity <= self.high + _EPS:
                raise BadInput(f"sparsity {sparsity} is outside the allowed range [{self.low}, {self.high}]")
            return Choice(self.snap(sparsity), exact=True)
        if size is not None:
            if size not in self.named:
                raise BadInput(f"unknown size {size!r}; sizes are {', '.join(sorted(self.named))}")
            return Choice(self.named[size], name=size)
        if budget_ms is not None:
            return Choice(None, budget_ms=budget_ms)
        return self.default
