"""The agreement floor: the offline estimate until enough shadow samples exist, then the measured agreement; on a
real server it changes the size a tight budget gets, and the response says the floor decided."""

from collections.abc import Callable

import pytest
from svc_live import live_server

from service.floor import Floor, offline_agreement
from service.settings import Settings
from service.shadow import AgreementBook
from service.sizes import SizePolicy

LEVELS = [{"sparsity": 0.0, "accuracy": 0.9}, {"sparsity": 0.5, "accuracy": 0.855}, {"sparsity": 0.9, "accuracy": 0.72}]
CANDS = [0.0, 0.5, 0.9]


def floor(min_agreement: float | None = 0.9, by_name: dict[str, float] | None = None, samples: int = 10) -> Floor:
    return Floor(
        "classify", AgreementBook(), min_agreement, by_name or {}, samples, offline_agreement(LEVELS, "accuracy")
    )


def test_offline_estimate_is_the_metric_relative_to_dense() -> None:
    f = floor()
    assert f.estimate(0.5) == (pytest.approx(0.95), "offline")
    assert f.estimate(0.7)[0] == pytest.approx((0.95 + 0.8) / 2)  # linear between stored levels
    assert f.allowed(CANDS) == [0.0, 0.5]


def test_measured_agreement_replaces_the_estimate_once_there_are_enough_samples() -> None:
    f = floor()
    f.book.record("classify", 0.9, {"label": [1.0] * 9})
    assert f.estimate(0.9) == (pytest.approx(0.8), "offline")  # 9 < 10 samples
    f.book.record("classify", 0.9, {"label": [1.0]})
    assert f.estimate(0.9) == (1.0, "shadow") and f.allowed(CANDS) == CANDS
    f.book.record("classify", 0.5, {"label": [0.0] * 10})
    assert f.allowed(CANDS) == [0.0, 0.9]  # measured 0 at 0.5: held back, whatever the offline figure says


def test_no_floor_and_unknown_sizes_hold_nothing_back() -> None:
    assert floor(None).allowed(CANDS) == CANDS
    bare = Floor("classify", AgreementBook(), 0.99)
    assert bare.allowed(CANDS) == CANDS  # neither samples nor an offline metric: not held back
    assert floor(1.0).allowed(CANDS) == [0.0]  # the dense size always agrees


def test_a_named_size_below_its_floor_runs_denser() -> None:
    f = floor(None, {"small": 0.9})
    assert f.for_name("small", 0.9, CANDS) == 0.5
    assert f.for_name("medium", 0.9, CANDS) == 0.9  # no floor of its own


def test_a_floor_for_an_unknown_size_name_is_refused(make_settings: Callable[..., Settings]) -> None:
    from dynsparse.errors import InputError

    policy = SizePolicy.build(make_settings(), (0.0, 0.9))
    with pytest.raises(InputError, match="huge"):
        Floor.build("classify", AgreementBook(), policy, LEVELS, "accuracy", 0.9, {"huge": 0.5}, 50)


def test_the_floor_changes_the_size_a_tight_budget_gets(make_settings: Callable[..., Settings]) -> None:
    """The tiny checkpoint's offline accuracy falls below 99.5% of dense's past the first levels: with the floor,
    a budget no size can meet gets the smallest size that meets the floor instead of the smallest of all."""
    body = {"inputs": ["w1 w2 w3"], "latency_budget_ms": 0.001}
    with live_server(make_settings()) as plain, plain.client() as c:
        free = c.post("/v1/classify", json=body).json()
    with live_server(make_settings(min_agreement=0.995)) as floored, floored.client() as c:
        held = c.post("/v1/classify", json=body).json()
        sizes = c.get("/v1/sizes").json()
        decisions = floored.metric("dynsparse_size_decisions_total", reason="floor")
    allowed = [lv["sparsity"] for lv in sizes["levels"] if lv["agreement"] is None or lv["agreement"] >= 0.995]
    assert free["size_reason"] == "budget" and free["sparsity"] == max(lv["sparsity"] for lv in sizes["levels"])
    assert held["size_reason"] == "floor" and held["sparsity"] == max(allowed) < free["sparsity"]
    assert sizes["min_agreement"] == 0.995 and decisions == 1


def test_goodput_counts_met_budgets_per_size(make_settings: Callable[..., Settings]) -> None:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    with live_server(make_settings()) as live, live.client() as c:
        for _ in range(3):
            assert c.post("/v1/classify", json={"inputs": ["w1"], "latency_budget_ms": 10_000}).json()["budget_met"]
        assert c.post("/v1/classify", json={"inputs": ["w1"], "latency_budget_ms": 0.001}).json()["budget_met"] is False
        fams = {f.name: f for f in text_string_to_metric_families(httpx.get(live.url + "/metrics").text)}
    met = {s.labels["size"]: s.value for s in fams["dynsparse_budget_met"].samples if s.name.endswith("_total")}
    budgeted = sum(s.value for s in fams["dynsparse_budgeted"].samples if s.name.endswith("_total"))
    window = {s.labels["size"]: s.value for s in fams["dynsparse_budget_met_ratio"].samples}
    rate = {s.labels["size"]: s.value for s in fams["dynsparse_goodput_per_second"].samples}
    assert met == {"0.00": 3.0} and budgeted == 4
    assert window["all"] == pytest.approx(0.75) and window["0.00"] == 1.0 and rate["all"] > 0
    reasons = {
        s.labels["reason"]: s.value for s in fams["dynsparse_size_decisions"].samples if s.name.endswith("_total")
    }
    assert reasons == {"budget": 1.0}  # the tight budget went smaller; the generous ones got dense
