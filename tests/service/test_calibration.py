"""The planner's online calibration: corrections learned from measured latencies, the batch cost model and
the queue's wait estimate (pure: no timing assertions)."""

import asyncio
import time
from collections.abc import Sequence
from dataclasses import replace

import pytest
from test_batcher import FakeRunner
from test_planner import make_profile

from dynsparse.masks import Structure
from service.batcher import Batcher
from service.jobs import Job, backlog_ms
from service.lane import IdleLane
from service.metrics import Metrics
from service.planner import ArrivalRate, Calibration, Correction, LatencyProfile, Planner, TailResidual
from service.shadow import AgreementBook, Shadow

pytestmark = pytest.mark.anyio

SMALL: Structure = ((1, 8),)
BIG: Structure = ((4, 64),)


def job(n: int = 1, structure: Structure = SMALL, cost_ms: float = 1.0, overhead_ms: float = 10.0) -> Job:
    items: Sequence[str] = ["x"] * n
    return Job("classify", items, 0.5, structure, time.monotonic() + 60, cost_ms=cost_ms, overhead_ms=overhead_ms)


def test_a_correction_starts_at_one_and_converges_to_the_measured_ratio() -> None:
    c = Correction(alpha=0.1)
    assert c.factor == 1.0
    for _ in range(200):
        c.update(30.0, 10.0)
    assert c.factor == pytest.approx(3.0, rel=1e-3)
    for _ in range(200):  # the device got faster again: it follows
        c.update(8.0, 10.0)
    assert c.factor == pytest.approx(0.8, rel=1e-3)


def test_each_sample_moves_it_by_alpha() -> None:
    c = Correction(alpha=0.25)
    c.update(20.0, 10.0)
    assert c.factor == pytest.approx(1.25)


def test_a_correction_is_clamped_and_ignores_meaningless_samples() -> None:
    c = Correction(alpha=0.5, low=0.5, high=5.0)
    for _ in range(50):
        c.update(1e6, 1.0)
    assert c.factor == pytest.approx(5.0)
    for _ in range(50):
        c.update(0.0, 1.0)
    assert c.factor == pytest.approx(0.5)
    before = c.factor
    for measured, predicted in ((5.0, 0.0), (5.0, -1.0), (float("nan"), 1.0), (1.0, float("inf"))):
        c.update(measured, predicted)
    assert c.factor == before


def test_one_outlier_moves_it_at_most_alpha_of_the_clamp() -> None:
    c = Correction(alpha=0.1, high=5.0)
    c.update(1e9, 1.0)
    assert c.factor == pytest.approx(1.0 + 0.1 * (5.0 - 1.0))


def test_a_tail_residual_plans_for_its_quantile_of_recent_lateness() -> None:
    steady, skewed = TailResidual(quantile=0.99, window=500), TailResidual(quantile=0.99, window=500)
    assert skewed.margin_ms == 0.0  # nothing measured yet
    for i in range(1000):
        steady.update(15.0, 10.0)
        skewed.update(40.0 if i % 50 == 0 else 10.0, 10.0)  # 2% of requests finish 30 ms late: the p99 is that tail
    assert steady.margin_ms == pytest.approx(5.0)
    assert skewed.margin_ms == pytest.approx(30.0)
    median = TailResidual(quantile=0.5)
    for i in range(1000):
        median.update(40.0 if i % 50 == 0 else 8.0, 10.0)
    assert median.margin_ms == pytest.approx(-2.0)  # over-predicting: a budget may afford a bigger size


def test_a_tail_residual_takes_the_nearest_rank_and_refuses_nonsense() -> None:
    t = TailResidual(quantile=0.81, window=300)
    for i in range(300):
        t.update(float(i), 0.0)
    assert t.margin_ms == 242.0  # rank ceil(0.81 x 300) = 243, not 244 (0.81 x 300 is 243.00000000000003)
    for quantile, window in ((0.0, 10), (1.0, 10), (0.9, 0)):
        with pytest.raises(ValueError):
            TailResidual(quantile=quantile, window=window)


def test_a_tail_residual_forgets_what_left_its_window() -> None:
    t = TailResidual(quantile=0.99, window=100)
    for _ in range(100):
        t.update(40.0, 10.0)
    assert t.margin_ms == pytest.approx(30.0)
    for _ in range(100):  # the slow spell is over: after one window it no longer counts
        t.update(12.0, 10.0)
    assert t.margin_ms == pytest.approx(2.0)
    for measured, predicted in ((float("nan"), 1.0), (1.0, float("inf"))):
        t.update(measured, predicted)
    assert t.margin_ms == pytest.approx(2.0) and len(t._sorted) == 100
    t.update(1e12, 1.0)
    assert t.margin_ms == pytest.approx(2.0)  # one outlier in 100 is under the p99
    t.update(1e12, 1.0)
    assert t.margin_ms == pytest.approx(60_000.0)  # two are the p99, clamped


def test_batch_costs_are_the_profile_as_a_line_in_the_batch_size() -> None:
    planner = Planner(make_profile(), max_batch_size=32, max_tokens=128)
    for s in (0.0, 0.45, 0.9):
        per_batch, per_row = planner.batch_costs(s, 64)
        assert per_batch > 0 and per_row > 0
        for b in (1, 8):
            assert per_batch + b * per_row == pytest.approx(planner.profile.predict(s, b, 64))
        assert planner.overhead_ms(s, 64) == per_batch and planner.cost_ms(s, 3, 64) == pytest.approx(3 * per_row)


def test_a_slower_device_than_profiled_picks_a_smaller_size() -> None:
    planner = Planner(make_profile(), max_batch_size=8, max_tokens=128)
    candidates = [0.0, 0.3, 0.6, 0.9]
    budget = planner.predict_ms(0.0, 1, 16) * 1.1
    assert planner.pick(budget, 0.0, 1, 16, candidates).sparsity == 0.0
    for _ in range(100):  # batches ran 1.8x slower than the profile said
        planner.calibration.inference.update(18.0, 10.0)
    plan = planner.pick(budget, 0.0, 1, 16, candidates)
    assert plan.fits and plan.sparsity > 0.0
    assert plan.predicted_ms == pytest.approx(
        planner.calibration.inference.factor * planner.predict_ms(plan.sparsity, 1, 16)
    )


def test_a_budget_plans_for_the_learned_lateness() -> None:
    planner = Planner(make_profile(), max_batch_size=8, max_tokens=128, calibration=Calibration())
    alone = planner.predict_ms(0.0, 1, 16)
    budget = 10.0 + alone + 0.01
    assert planner.pick(budget, 10.0, 1, 16, [0.0, 0.9]).sparsity == 0.0
    for _ in range(100):  # requests finished 5 ms later than the queue model said
        planner.calibration.latency.update(25.0, 20.0)
    plan = planner.pick(budget, 10.0, 1, 16, [0.0, 0.9])
    assert plan.sparsity == 0.9
    assert plan.predicted_ms == pytest.approx(10.0 + planner.predict_ms(0.9, 1, 16) + 5.0)


def test_joining_a_queued_batch_costs_only_its_rows() -> None:
    planner = Planner(make_profile(), max_batch_size=8, max_tokens=128)
    alone, joined = planner.expected_ms(0.0, 5.0, 1, 16), planner.expected_ms(0.0, 5.0, 1, 16, joins=True)
    assert alone == pytest.approx(5.0 + planner.predict_ms(0.0, 1, 16))
    assert joined == pytest.approx(5.0 + planner.cost_ms(0.0, 1, 16)) and joined < alone
    budget = (alone + joined) / 2  # the dense size fits only by joining the dense batch already queued
    assert planner.pick(budget, 5.0, 1, 16, [0.0, 0.9]).sparsity == 0.9
    assert planner.pick(budget, 5.0, 1, 16, [0.0, 0.9], joinable={0.0}).sparsity == 0.0


def test_under_frequent_arrivals_a_budget_leaves_room_for_the_request_behind() -> None:
    """A batch cannot be interrupted: a request arriving as it starts waits all of it, then needs the smallest
    size's time. Dense fits this budget alone but not with that behind it."""
    planner = Planner(make_profile(), max_batch_size=8, max_tokens=128)
    candidates = [0.0, 0.3, 0.6, 0.9]
    dense, smallest = planner.predict_ms(0.0, 1, 16), planner.predict_ms(0.9, 1, 16)
    budget = dense + 0.5 * smallest
    assert planner.pick(budget, 0.0, 1, 16, candidates, arrivals_per_s=1.0).sparsity == 0.0  # 0.2% land in it
    plan = planner.pick(budget, 0.0, 1, 16, candidates, arrivals_per_s=100.0)  # 20% would
    assert plan.fits and plan.sparsity == 0.6
    assert planner.predict_ms(0.6, 1, 16) + smallest <= budget < planner.predict_ms(0.3, 1, 16) + smallest
    tight = smallest * 1.5  # not even the smallest leaves room: the smallest that fits, still a fit
    assert planner.pick(tight, 0.0, 1, 16, candidates, arrivals_per_s=100.0) == planner.pick(tight, 0.0, 1, 16, [0.9])


def test_the_arrival_rate_counts_recent_requests_and_ignores_a_lone_one() -> None:
    rate = ArrivalRate(window_s=5.0)
    assert rate.per_s(100.0) == 0.0
    rate.note(100.0)
    assert rate.per_s(100.0) == 0.0  # one request after a quiet spell is no traffic
    for k in range(1, 21):
        rate.note(100.0 + k * 0.1)
    assert rate.per_s(102.0) == pytest.approx(10.0)
    assert rate.per_s(106.55) == pytest.approx(4 / 4.95)  # the last 5 s hold 5 arrivals, the oldest 4.95 s ago
    assert rate.per_s(200.0) == 0.0


async def test_the_backlog_counts_one_batch_per_distinct_size_queued() -> None:
    same = [job(), job(), job()]
    mixed = [job(structure=SMALL), job(structure=BIG), job(structure=((2, 16),))]
    assert backlog_ms(same, max_batch_size=8) == pytest.approx(3 * 1.0 + 10.0)
    assert backlog_ms(mixed, max_batch_size=8) == pytest.approx(3 * 1.0 + 3 * 10.0)
    big = [job(5, cost_ms=5.0), job(5, cost_ms=5.0)]  # 10 rows of one size: 2 batches of at most 8
    assert backlog_ms(big, max_batch_size=8) == pytest.approx(10.0 + 2 * 10.0)
    assert backlog_ms([], max_batch_size=8) == 0.0


async def test_the_wait_estimate_counts_batches_and_the_measured_speed() -> None:
    b = Batcher(FakeRunner(), max_batch_size=8, batch_wait_ms=0, queue_limit=16)  # never started: nothing runs
    for j in (job(), job(), job(structure=BIG)):
        b.submit(j)
    assert b.wait_estimate_ms() == pytest.approx(3 * 1.0 + 2 * 10.0)
    for _ in range(100):
        b.calibration.inference.update(20.0, 10.0)
    assert b.wait_estimate_ms() == pytest.approx(b.calibration.inference.factor * (3 * 1.0 + 2 * 10.0))
    assert b.queued_keys() == {("classify", SMALL, None), ("classify", BIG, None)}


async def test_finished_work_updates_the_corrections_and_their_gauges() -> None:
    metrics = Metrics()
    b = Batcher(FakeRunner(delay=0.02), max_batch_size=8, batch_wait_ms=0, queue_limit=16, metrics=metrics)
    async with b.running():
        j = job(cost_ms=1.0, overhead_ms=0.0)  # predicted 1 ms; the runner sleeps 20
        j.expected_ms = 10.0
        b.submit(j)
        await asyncio.wait_for(j.future, 10)
    assert b.calibration.inference.factor > 1.0
    b.observe_latency(j, 30.0)
    assert b.calibration.latency.margin_ms == pytest.approx(20.0)  # the one request measured: 30 ms against 10
    body = metrics.render()[0].decode()
    assert 'dynsparse_latency_correction_ratio{kind="inference"}' in body
    assert "dynsparse_latency_margin_seconds 0.02" in body


async def test_a_running_shadow_batch_counts_whole_in_the_wait_estimate() -> None:
    """A dense re-run in the idle lane holds the worker like any batch: a budget planned while it runs must wait
    for all of it, its per-batch part included (most of a one-input batch)."""
    slow = LatencyProfile("test", tuple(replace(p, latency_ms=100 * p.latency_ms) for p in make_profile().points))
    planner = Planner(slow, max_batch_size=8, max_tokens=128)  # dense, one input: 220 ms, 20 of them its row
    b = Batcher(FakeRunner(delay=0.5), max_batch_size=8, batch_wait_ms=0, queue_limit=16, lane=IdleLane(idle_ms=1))
    shadow = Shadow(1.0, 4, AgreementBook(), b, lambda s: SMALL, planner, timeout_s=10)
    served = job()
    served.sparsity = 0.9
    async with b.running():
        shadow.follow("classify", served, [(0, 1.0)], 16)
        while not b._busy_until:
            await asyncio.sleep(0.005)
        assert b.wait_estimate_ms() == pytest.approx(planner.predict_ms(0.0, 1, 16), abs=15.0)
