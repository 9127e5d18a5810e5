"""SLO goodput: requests that met their latency budget, per size and overall, and what decided each size change.

Counters for Prometheus (`rate(dynsparse_budget_met_total[1m])` is goodput per second) and the same over the last
`window_s` seconds as gauges, computed when scraped, for the console (which shows them without PromQL):

    dynsparse_budget_met_total{size}          requests that met their budget
    dynsparse_budgeted_total{size}            requests with a budget
    dynsparse_goodput_per_second{size}        met budgets per second over the window (size "all": every size)
    dynsparse_budget_met_ratio{size}          share of budgeted requests that met it, over the window
    dynsparse_size_decisions_total{reason}    requests not served at the densest size they could have had:
                                              budget (the planner went smaller to fit), overload (the queue was
                                              filling), floor (the agreement floor, not the budget, decided)
"""

import time
from collections import deque
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.metrics import size_label

ALL = "all"


class Slo:
    """Goodput bookkeeping (on the event loop); its gauges are computed at each scrape of `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None, window_s: float = 60.0) -> None:
        r = registry or CollectorRegistry()
        self.window_s = window_s
        self.started = time.monotonic()
        self.met = Counter("dynsparse_budget_met", "Requests that met their latency budget", ["size"], registry=r)
        self.budgeted = Counter("dynsparse_budgeted", "Requests with a latency budget", ["size"], registry=r)
        self.decisions = Counter(
            "dynsparse_size_decisions",
            "Requests served below the densest size they could have had, by what decided: budget, overload, floor",
            ["reason"],
            registry=r,
        )
        self._events: deque[tuple[float, str, bool]] = deque()  # (monotonic time, size, met) in the window
        r.register(_WindowCollector(self))

    def record(self, sparsity: float, met: bool) -> None:
        """One request with a budget, served at `sparsity`."""
        size = size_label(sparsity)
        self.budgeted.labels(size).inc()
        if met:
            self.met.labels(size).inc()
        now = time.monotonic()
        self._events.append((now, size, met))
        self._prune(now)

    def decided(self, reason: str) -> None:
        self.decisions.labels(reason).inc()

    def window(self) -> dict[str, tuple[float, float | None]]:
        """Per size (and "all"): (met budgets per second, share met) over the window (or since start if shorter)."""
        now = time.monotonic()
        self._prune(now)
        span = max(min(self.window_s, now - self.started), 1e-3)
        counts: dict[str, list[int]] = {ALL: [0, 0]}
        for _, size, met in self._events:
            for key in (size, ALL):
                c = counts.setdefault(key, [0, 0])
                c[0] += met
                c[1] += 1
        return {k: (met / span, met / n if n else None) for k, (met, n) in counts.items()}

    def _prune(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window_s:
            self._events.popleft()


class _WindowCollector(Collector):
    def __init__(self, slo: Slo) -> None:
        self.slo = slo

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rate = GaugeMetricFamily(
            "dynsparse_goodput_per_second",
            f"Met latency budgets per second over the last {self.slo.window_s:g} s",
            labels=["size"],
        )
        share = GaugeMetricFamily(
            "dynsparse_budget_met_ratio",
            f"Share of budgeted requests that met it, last {self.slo.window_s:g} s",
            labels=["size"],
        )
        for size, (per_s, met) in sorted(self.slo.window().items()):
            rate.add_metric([size], per_s)
            if met is not None:
                share.add_metric([size], met)
        yield rate
        yield share
