"""Goodput over a window: met budgets per second and the share met, per size and overall."""

import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.slo import Slo


def test_window_counts_only_recent_requests() -> None:
    slo = Slo(window_s=0.2)
    slo.record(0.0, True)
    slo.record(0.5, False)
    window = slo.window()
    assert window["all"][1] == 0.5 and window["0.00"][1] == 1.0 and window["0.50"][1] == 0.0
    time.sleep(0.25)
    assert slo.window() == {"all": (0.0, None)}  # the counters keep counting; the window forgets


def test_gauges_parse_with_prometheus_client() -> None:
    r = CollectorRegistry()
    slo = Slo(r, window_s=60)
    for met in (True, True, False):
        slo.record(0.3, met)
    slo.decided("floor")
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(r).decode())}
    share = {s.labels["size"]: s.value for s in fams["dynsparse_budget_met_ratio"].samples}
    assert share == {"0.30": pytest.approx(2 / 3), "all": pytest.approx(2 / 3)}
    assert {
        s.labels["reason"]: s.value for s in fams["dynsparse_size_decisions"].samples if s.name.endswith("_total")
    } == {"floor": 1.0}
