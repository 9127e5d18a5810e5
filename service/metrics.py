"""Prometheus metrics: requests (by status code), errors, queue time, inference time and batch size, by size; the
planner's latency corrections; the process and Python collectors. Names are in base units (seconds, `_ratio`),
and no `_created` series are exported (they double every counter for little use).

Each app gets its own registry (several apps in one test process must not collide). Sizes are labelled
by sparsity rounded to two decimals, so arbitrary client floats cannot grow the label set without bound.
"""

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # type: ignore[no-untyped-call]  # process-wide in prometheus_client

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def size_label(sparsity: float) -> str:
    """The `size` label of a sparsity."""
    return f"{sparsity:.2f}"


class Metrics:
    """The service's metrics in one registry; `render()` is the `/metrics` body."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        size = ["size"]
        seconds: dict[str, Any] = {"buckets": _SECONDS, "registry": r}
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):  # stateless: safe in many registries
            r.register(collector)
        self.requests = Counter(
            "dynsparse_requests",
            "Requests answered, by status code (errors: size none)",
            ["endpoint", "size", "code"],
            registry=r,
        )
        self.errors = Counter("dynsparse_errors", "Error responses", ["endpoint", "error_type"], registry=r)
        self.request_time = Histogram(
            "dynsparse_request_seconds", "Time in the server", ["endpoint", "size"], **seconds
        )
        self.queue_time = Histogram("dynsparse_queue_seconds", "Time a request waited for its batch", size, **seconds)
        self.inference_time = Histogram(
            "dynsparse_inference_seconds", "Batch time (tokenize + forward)", size, **seconds
        )
        self.batch_size = Histogram("dynsparse_batch_size", "Inputs per batch", size, buckets=_BATCH, registry=r)
        self.queue_depth = Gauge("dynsparse_queue_depth", "Requests waiting for the model", registry=r)
        self.degraded = Counter("dynsparse_degraded", "Requests served smaller: the queue was filling", registry=r)
        self.dropped = Counter(
            "dynsparse_dropped", "Requests dropped unrun (deadline, disconnect)", ["reason"], registry=r
        )
        self.budget = Counter("dynsparse_latency_budget", "Requests with a latency budget, by met", ["met"], registry=r)
        self.correction = Gauge(
            "dynsparse_latency_correction_ratio",
            "Measured / profiled batch time: the device's speed now, which scales every prediction (kind: inference)",
            ["kind"],
            registry=r,
        )
        self.correction.labels("inference").set(1.0)  # no measurement yet: the profile as it is
        self.latency_margin = Gauge(
            "dynsparse_latency_margin_seconds",
            "What a latency budget plans for beyond the prediction: the budget_quantile of measured - predicted",
            registry=r,
        )

    def render(self) -> tuple[bytes, str]:
        """(body, content type) in the Prometheus text format."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
