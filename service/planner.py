"""Latency budget -> size: a measured latency profile, interpolated, and the choice it drives.

At start the server measures a few sizes x batch sizes x lengths on its own device (or reads them from a
cache); any other point is interpolated: bilinear in (batch, length) at each measured size, then linear
in sparsity between sizes. A budget picks the densest size whose predicted latency, queue wait included,
fits; none fits -> the smallest, and the response says the budget was not met.

A batch cannot be interrupted, so a size also decides what a request arriving just after it waits. While
requests arrive often enough that one is likely to land inside a batch (more than the share of budgets allowed
to miss), a budget only takes a size that leaves such a request room to meet the same budget at the smallest
size (the blocking term of non-preemptive scheduling). Greedy sizes without it served dense batches of 25-45 ms
at 10-20 req/s and the requests queued behind them missed a 50 ms budget (3-5% of them, measured).

The start-up profile is measured on a quiet device; under load (a CPU shared with clients, other jobs) the
server runs slower than profiled, so every prediction is scaled by a correction the batcher keeps from
what it measures while serving (`Calibration`).
"""

import bisect
import json
import logging
import math
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
_CHARS_PER_TOKEN = 3.0  # pessimistic for English subwords (~4): a budget is better met than missed
_SPECIAL_TOKENS = 3  # [CLS] a [SEP] b [SEP]


@dataclass(frozen=True)
class ProfilePoint:
    """One measurement: median ms of a forward pass of `batch` x `seq_len` tokens at `sparsity`."""

    sparsity: float
    batch: int
    seq_len: int
    latency_ms: float


@dataclass(frozen=True)
class LatencyProfile:
    """Measured latency on one device, and predictions between (and beyond) the measured points."""

    device: str
    points: tuple[ProfilePoint, ...]
    _memo: dict[tuple[float, int, int], float] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("a latency profile needs at least one point")

    @property
    def levels(self) -> list[float]:
        """The measured sparsities, ascending."""
        return list(self._grids)

    def predict(self, sparsity: float, batch: int, seq_len: int) -> float:
        """Predicted ms of one forward pass; linear in sparsity between the two nearest measured sizes."""
        key = (sparsity, batch, seq_len)
        known = self._memo.get(key)
        if known is None:  # a request asks several times per size: each prediction is computed once
            at = [_at_grid(grid, batch, seq_len) for grid in self._grids.values()]
            known = max(piecewise_linear(sparsity, list(self._grids), at, extrapolate=False), 1e-3)
            if len(self._memo) < _MEMO_LIMIT:
                self._memo[key] = known
        return known

    @cached_property
    def _grids(self) -> dict[float, "_Grid"]:
        """Per measured sparsity (ascending): the batch x length grid of latencies, built once."""
        return {s: _grid_of(self.points, s) for s in sorted({p.sparsity for p in self.points})}

    def monotone(self) -> "LatencyProfile":
        """The profile made consistent: more work (batch, length) or a denser size is never faster.

        A point slower than a bigger workload was disturbed (another process took the cores while it ran),
        so each point becomes the minimum over every point that does at least as much work.
        """
        fixed = [replace(p, latency_ms=min(q.latency_ms for q in self.points if _at_least(q, p))) for p in self.points]
        return LatencyProfile(self.device, tuple(fixed))

    def to_json(self) -> dict[str, Any]:
        """The cache file's content."""
        return {"device": self.device, "points": [asdict(p) for p in self.points]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LatencyProfile":
        """Read a cache file's content (`KeyError`/`TypeError`/`ValueError` when malformed)."""
        return cls(str(data["device"]), tuple(ProfilePoint(**p) for p in data["points"]))


_MEMO_LIMIT = 65536  # (size, batch, length) predictions kept; past it they are computed each time
_Grid = tuple[list[int], list[int], list[list[float]]]  # batches, lengths, latency[batch][length]


def _grid_of(points: Sequence[ProfilePoint], sparsity: float) -> _Grid:
    pts = {(p.batch, p.seq_len): p.latency_ms for p in points if p.sparsity == sparsity}
    batches, lens = sorted({b for b, _ in pts}), sorted({t for _, t in pts})
    # a missing grid point (a hand-edited cache) falls back to the nearest measured one
    return batches, lens, [[pts.get((b, t), min(pts.values())) for t in lens] for b in batches]


def _at_grid(grid: _Grid, batch: int, seq_len: int) -> float:
    batches, lens, rows = grid
    return piecewise_linear(batch, batches, [piecewise_linear(seq_len, lens, row) for row in rows])


def _at_least(q: ProfilePoint, p: ProfilePoint) -> bool:
    """Does `q` do at least the work of `p` (as big a batch, as long, as dense)?"""
    return q.batch >= p.batch and q.seq_len >= p.seq_len and q.sparsity <= p.sparsity


def piecewise_linear(x: float, xs: Sequence[float], ys: Sequence[float], extrapolate: bool = True) -> float:
    """Piecewise-linear y(x); below xs[0] clamps (latency never shrinks past what was measured), above
    it extends the last segment when `extrapolate` (bigger batches and longer texts cost more)."""
    if len(xs) == 1 or x <= xs[0]:
        return ys[0]
    if x >= xs[-1] and not extrapolate:
        return ys[-1]
    i = next((k for k in range(1, len(xs)) if x <= xs[k]), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def load_profile(path: Path) -> LatencyProfile | None:
    """A cached profile, or None when there is none or it cannot be read (it is then measured again)."""
    try:
        return LatencyProfile.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("ignoring unreadable latency profile %s (%s)", path, e)
        return None


def save_profile(path: Path, profile: LatencyProfile) -> None:
    """Cache `profile` at `path`; a read-only disk only costs a new measurement next start."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(profile.to_json(), indent=1))
        tmp.replace(path)  # atomic: two servers starting at once never read half a file
    except OSError as e:
        log.warning("cannot cache the latency profile at %s (%s)", path, e)


@dataclass
class Correction:
    """How far measured latencies run over predicted ones: an EWMA of the ratio measured / predicted, clamped to
    [low, high]. Starts at 1; each ratio is clamped before it counts, so one outlier moves it by at most `alpha`
    of the clamp."""

    alpha: float = 0.1
    low: float = 0.5
    high: float = 5.0
    mean: float = 1.0

    @property
    def factor(self) -> float:
        """Multiply a prediction by this."""
        return self.mean

    def update(self, measured_ms: float, predicted_ms: float) -> None:
        """One sample; a zero or non-finite prediction says nothing and is skipped."""
        ratio = _ratio(measured_ms, predicted_ms, self.low, self.high)
        if ratio is not None:
            self.mean += self.alpha * (ratio - self.mean)


@dataclass
class TailResidual:
    """The `quantile` of the last `window` residuals measured - predicted (ms): how much later than predicted a
    request may finish, for a budget to be met that often. Additive, not a ratio: what the queue model misses
    (jobs arriving later that share a batch ahead of it, the event loop's own delays) does not grow with the
    prediction, and as a ratio it made requests with short predictions look 2-3x off, so the planner served
    near the smallest size even at 1.5x a budget it could meet with sparsity 0.6 (measured). A quantile, not
    mean + k deviations: the residual is skewed, and a quantile needs no assumption about its shape. Starts at
    0; with few samples it is about their largest."""

    quantile: float = 0.99
    window: int = 500
    _recent: deque[float] = field(default_factory=deque, repr=False)
    _sorted: list[float] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not (0 < self.quantile < 1 and self.window >= 1):
            raise ValueError(f"quantile must be in (0, 1) and window >= 1, got {self.quantile}, {self.window}")

    @property
    def margin_ms(self) -> float:
        """Add this to a prediction."""
        if not self._sorted:
            return 0.0
        rank = math.ceil(self.quantile * len(self._sorted) - 1e-9)  # nearest rank; the epsilon absorbs float error
        return self._sorted[min(len(self._sorted), max(1, rank)) - 1]

    def update(self, measured_ms: float, predicted_ms: float) -> None:
        """One sample (the oldest of a full window leaves); a non-finite one is skipped."""
        if not (math.isfinite(predicted_ms) and math.isfinite(measured_ms)):
            return
        residual = min(_MAX_RESIDUAL_MS, max(-_MAX_RESIDUAL_MS, measured_ms - predicted_ms))
        if len(self._recent) >= self.window:
            del self._sorted[bisect.bisect_left(self._sorted, self._recent.popleft())]
        self._recent.append(residual)
        bisect.insort(self._sorted, residual)


_MAX_RESIDUAL_MS = 60_000.0  # one absurd sample (a suspended process) moves the quantile by one rank only


def _ratio(measured_ms: float, predicted_ms: float, low: float, high: float) -> float | None:
    if not (predicted_ms > 0 and math.isfinite(predicted_ms) and math.isfinite(measured_ms)):
        return None
    return min(high, max(low, measured_ms / predicted_ms))


@dataclass
class ArrivalRate:
    """Requests admitted per second over the last `window_s`: (n - 1) arrivals over the span of the n seen, so a
    lone request after a quiet spell counts as no traffic."""

    window_s: float = 5.0
    _times: deque[float] = field(default_factory=lambda: deque(maxlen=50_000), repr=False)

    def note(self, now: float) -> None:
        """One request admitted at `now` (monotonic seconds)."""
        self._times.append(now)

    def per_s(self, now: float) -> float:
        """The recent rate; 0 with fewer than two arrivals in the window."""
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()
        span = now - self._times[0] if self._times else 0.0
        return (len(self._times) - 1) / span if len(self._times) >= 2 and span > 0 else 0.0


@dataclass
class Calibration:
    """The corrections the server learns while serving (updated on the event loop only).

    `inference`: measured batch time / the profile's prediction for that batch (the device's speed now).
    `latency`: a request's measured time to its result - `Planner.expected_ms` at admission (already scaled by
    `inference`), at the quantile of budgets to meet: what the queue model misses.
    `arrivals`: how often requests come (whether a batch is likely to hold one up).
    """

    inference: Correction = field(default_factory=Correction)
    latency: TailResidual = field(default_factory=TailResidual)
    arrivals: ArrivalRate = field(default_factory=ArrivalRate)


@dataclass(frozen=True)
class Plan:
    """The size chosen for a budget and what it is predicted to cost, queue wait included."""

    sparsity: float
    predicted_ms: float
    fits: bool


@dataclass(frozen=True)
class Planner:
    """Predicts request latency from the profile and picks sizes for latency budgets."""

    profile: LatencyProfile
    max_batch_size: int
    max_tokens: int
    calibration: Calibration = field(default_factory=Calibration, compare=False)

    def estimate_tokens(self, longest_chars: int) -> int:
        """Tokens of the longest text, guessed from its length (texts are tokenized later, in batches)."""
        return min(self.max_tokens, math.ceil(longest_chars / _CHARS_PER_TOKEN) + _SPECIAL_TOKENS)

    def estimate_windows(self, chars: int, window: int) -> int:
        """Windows of `window` tokens that a question and context of `chars` characters are read in (each
        window advances by at least half of one: the question and the overlap take the rest)."""
        tokens = math.ceil(chars / _CHARS_PER_TOKEN) + _SPECIAL_TOKENS
        return 1 + max(0, math.ceil((tokens - window) / max(1, window // 2)))

    def predict_ms(self, sparsity: float, n_inputs: int, seq_len: int) -> float:
        """Inference time of `n_inputs` texts run alone (in chunks of the max batch size)."""
        chunks = math.ceil(n_inputs / self.max_batch_size)
        return chunks * self.profile.predict(sparsity, min(n_inputs, self.max_batch_size), seq_len)

    def batch_costs(self, sparsity: float, seq_len: int) -> tuple[float, float]:
        """(ms per batch, ms per row): the profile's latency as a line in the batch size. The per-batch part
        (dispatch, a pass over every weight) is what makes two half batches dearer than one full one."""
        one = self.profile.predict(sparsity, 1, seq_len)
        most = max(p.batch for p in self.profile.points)
        if most <= 1:  # no slope measured: every row costs a batch of one
            return 0.0, one
        per_row = min(one, max(0.0, (self.profile.predict(sparsity, most, seq_len) - one) / (most - 1)))
        return one - per_row, per_row

    def cost_ms(self, sparsity: float, n_inputs: int, seq_len: int) -> float:
        """What a queued request adds to the batch it joins (the batch's own cost: `overhead_ms`)."""
        return self.batch_costs(sparsity, seq_len)[1] * n_inputs

    def overhead_ms(self, sparsity: float, seq_len: int) -> float:
        """What each batch of this size costs besides its rows: paid once per distinct size queued."""
        return self.batch_costs(sparsity, seq_len)[0]

    def expected_ms(self, sparsity: float, wait_ms: float, n_inputs: int, seq_len: int, joins: bool = False) -> float:
        """Time to result of a request queued now behind `wait_ms` (the batcher's estimate): its rows, and a
        batch of its own unless it `joins` a queued batch of its size; the device's measured speed applied."""
        own = self.cost_ms if joins else self.predict_ms
        return wait_ms + self.calibration.inference.factor * own(sparsity, n_inputs, seq_len)

    def pick(
        self,
        budget_ms: float,
        wait_ms: float,
        n_inputs: int,
        seq_len: int,
        candidates: Sequence[float],
        joinable: Collection[float] = (),
        arrivals_per_s: float = 0.0,
    ) -> Plan:
        """The densest candidate whose `expected_ms` plus the learned latency margin fits `budget_ms` and, at
        `arrivals_per_s`, leaves a request arriving behind it room to meet the budget (see the module's text);
        else the smallest that fits, else the smallest. A size in `joinable` (a batch of it is queued) costs only
        its rows."""
        margin = self.calibration.latency.margin_ms
        plans = [
            Plan(s, self.expected_ms(s, wait_ms, n_inputs, seq_len, s in joinable) + margin, False)
            for s in sorted(candidates)
        ]
        fitting = [p for p in plans if p.predicted_ms <= budget_ms]
        if not fitting:
            return plans[-1]
        behind = margin + self.expected_ms(plans[-1].sparsity, 0.0, 1, seq_len)  # the next arrival, at the smallest
        safe = (
            p
            for p in fitting
            if self._leaves_room(p.predicted_ms - margin - wait_ms, behind, budget_ms, arrivals_per_s)
        )
        chosen = next(safe, fitting[-1])
        return Plan(chosen.sparsity, chosen.predicted_ms, True)

    def _leaves_room(self, blocks_ms: float, behind_ms: float, budget_ms: float, arrivals_per_s: float) -> bool:
        """Can a request arriving as a batch of `blocks_ms` starts still finish in budget (`behind_ms` after it)?
        Only asked while one is likely to arrive in it: P(an arrival) > the share of budgets allowed to miss."""
        likely = 1 - math.exp(-arrivals_per_s * blocks_ms / 1000) > 1 - self.calibration.latency.quantile
        return not likely or blocks_ms + behind_ms <= budget_ms
