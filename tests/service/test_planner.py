from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.planner import LatencyProfile, Planner, ProfilePoint, load_profile, save_profile


def make_profile() -> LatencyProfile:
    """Dense costs twice the smallest; latency = base + 0.1 ms per (batch x token)."""
    points = []
    for s, base in ((0.0, 2.0), (0.9, 1.0)):
        for b in (1, 8):
            for t in (16, 128):
                points.append(ProfilePoint(s, b, t, base * (1 + 0.1 * b * t / 16)))
    return LatencyProfile("test device", tuple(points))


def test_measured_points_are_predicted_exactly() -> None:
    p = make_profile()
    for pt in p.points:
        assert p.predict(pt.sparsity, pt.batch, pt.seq_len) == pytest.approx(pt.latency_ms)


def test_linear_between_sizes_and_clamped_outside() -> None:
    p = make_profile()
    mid = p.predict(0.45, 1, 16)
    assert mid == pytest.approx((p.predict(0.0, 1, 16) + p.predict(0.9, 1, 16)) / 2)
    assert p.predict(0.95, 1, 16) == pytest.approx(p.predict(0.9, 1, 16))


def test_bigger_work_extrapolates_smaller_work_clamps() -> None:
    p = make_profile()
    assert p.predict(0.0, 32, 128) > p.predict(0.0, 8, 128)
    assert p.predict(0.0, 1, 2) == pytest.approx(p.predict(0.0, 1, 16))


@given(st.floats(0, 0.9), st.integers(1, 64), st.integers(1, 512))
def test_predictions_are_positive_and_finite(s: float, b: int, t: int) -> None:
    assert 0 < make_profile().predict(s, b, t) < 1e6


def test_budget_picks_the_densest_size_that_fits() -> None:
    planner = Planner(make_profile(), max_batch_size=8, max_tokens=128)
    candidates = [0.0, 0.3, 0.6, 0.9]
    assert planner.pick(1e6, 0.0, 1, 16, candidates).sparsity == 0.0
    between = (planner.predict_ms(0.0, 1, 16) + planner.predict_ms(0.9, 1, 16)) / 2
    plan = planner.pick(between, 0.0, 1, 16, candidates)
    assert plan.fits and 0.0 < plan.sparsity < 0.9 and plan.predicted_ms <= between


def test_no_fit_gives_the_smallest_and_says_so() -> None:
    plan = Planner(make_profile(), 8, 128).pick(0.001, 0.0, 1, 16, [0.0, 0.9])
    assert plan.sparsity == 0.9 and not plan.fits


def test_queue_wait_counts_against_the_budget() -> None:
    planner = Planner(make_profile(), 8, 128)
    budget = planner.predict_ms(0.0, 1, 16) + 0.01
    assert planner.pick(budget, 0.0, 1, 16, [0.0, 0.9]).sparsity == 0.0
    assert planner.pick(budget, 1.0, 1, 16, [0.0, 0.9]).sparsity == 0.9


def test_requests_over_the_batch_size_run_in_chunks() -> None:
    planner = Planner(make_profile(), 8, 128)
    assert planner.predict_ms(0.0, 16, 16) == pytest.approx(2 * planner.predict_ms(0.0, 8, 16))
    per_batch, per_row = planner.batch_costs(0.0, 16)  # what a request adds to a batch it joins: its rows
    assert planner.cost_ms(0.0, 4, 16) == pytest.approx(4 * per_row) and per_batch + 8 * per_row == pytest.approx(
        planner.predict_ms(0.0, 8, 16)
    )


def test_token_estimate_is_capped() -> None:
    planner = Planner(make_profile(), 8, 64)
    assert planner.estimate_tokens(5) >= 4 and planner.estimate_tokens(10**6) == 64


def test_profile_cache_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "p.json"
    save_profile(path, make_profile())
    assert load_profile(path) == make_profile()
    assert load_profile(tmp_path / "missing.json") is None
    path.write_text("{not json")
    assert load_profile(path) is None


def test_monotone_profile_removes_disturbed_points() -> None:
    clean = make_profile()
    assert clean.monotone() == clean  # a consistent profile is left as measured
    disturbed = LatencyProfile(
        "d",
        tuple(
            ProfilePoint(
                p.sparsity,
                p.batch,
                p.seq_len,
                300.0 if (p.batch, p.seq_len, p.sparsity) == (1, 16, 0.9) else p.latency_ms,
            )
            for p in clean.points
        ),
    )
    fixed = disturbed.monotone()
    bound = min(clean.predict(0.9, 8, 16), clean.predict(0.9, 1, 128))  # the cheapest bigger workload
    assert fixed.predict(0.9, 1, 16) == pytest.approx(bound)
    for s in (0.0, 0.45, 0.9):  # more work is never faster
        assert fixed.predict(s, 1, 16) <= fixed.predict(s, 8, 16) <= fixed.predict(s, 8, 128)
