"""The batcher with a fake engine: grouping, limits, deadlines, overload, drain."""

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from dynsparse.errors import InputError
from dynsparse.masks import Structure
from service.batcher import Batcher
from service.engine import Endpoint, Item
from service.errors import BadInput, DeadlineExceeded, NotReady, Overloaded, ServiceError
from service.jobs import Job

pytestmark = pytest.mark.anyio  # async tests on asyncio (anyio's pytest plugin)

SMALL: Structure = ((1, 8),)
BIG: Structure = ((4, 64),)


class FakeRunner:
    """Echoes inputs; records every batch; optionally slow, failing, or rejecting texts "too long"."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.delay, self.fail = delay, fail
        self.calls: list[tuple[Endpoint, Structure, list[list[Item]]]] = []
        self.languages: list[str | None] = []  # per call, the ordering it ran with
        self.threads: set[str] = set()

    def run(
        self, task: Endpoint, structure: Structure, groups: Sequence[Sequence[Item]], language: str | None
    ) -> list[list[Any] | InputError]:
        self.calls.append((task, structure, [list(g) for g in groups]))
        self.languages.append(language)
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("device on fire")
        return [InputError("too long") if "too long" in g else [(0, 1.0)] * len(g) for g in groups]


def job(
    items: Sequence[Item],
    structure: Structure = SMALL,
    timeout: float = 10.0,
    task: Endpoint = "classify",
    language: str | None = None,
) -> Job:
    return Job(task, items, 0.5, structure, deadline=time.monotonic() + timeout, language=language, cost_ms=1.0)


def batcher(runner: FakeRunner, **kw: Any) -> Batcher:
    args: dict[str, Any] = {"max_batch_size": 4, "batch_wait_ms": 20, "queue_limit": 8} | kw
    return Batcher(runner, **args)


async def test_requests_are_grouped_by_task_and_size_off_the_loop() -> None:
    runner = FakeRunner()
    async with batcher(runner).running() as b:
        jobs = [job(["a"]), job(["b"], BIG), job(["c", "d"]), job(["e"], task="embed"), job(["f"], BIG)]
        for j in jobs:
            b.submit(j)
        results = await asyncio.gather(*(j.future for j in jobs))
    assert [len(r) for r in results] == [1, 1, 2, 1, 1]
    keys = sorted((task, s, sum(len(g) for g in groups)) for task, s, groups in runner.calls)
    assert keys == sorted([("classify", SMALL, 3), ("classify", BIG, 2), ("embed", SMALL, 1)])
    assert runner.threads == {"dynsparse-engine_0"}


async def test_requests_of_different_languages_never_share_a_batch() -> None:
    runner = FakeRunner()
    async with batcher(runner).running() as b:
        jobs = [job(["a"], language="de"), job(["b"], language="en"), job(["c"]), job(["d"], language="de")]
        for j in jobs:
            b.submit(j)
        await asyncio.gather(*(j.future for j in jobs))
    ran = sorted(
        (lang or "", sorted(i for g in groups for i in g))
        for lang, (_, _, groups) in zip(runner.languages, runner.calls, strict=True)
    )
    assert ran == [("", ["c"]), ("de", ["a", "d"]), ("en", ["b"])]


async def test_batches_respect_the_max_batch_size() -> None:
    runner = FakeRunner()
    async with batcher(runner, max_batch_size=3).running() as b:
        jobs = [job(["x", "y"]) for _ in range(4)] + [job(["z"] * 5)]
        for j in jobs:
            b.submit(j)
        await asyncio.gather(*(j.future for j in jobs))
    sizes = [sum(len(g) for g in groups) for _, _, groups in runner.calls]
    assert sorted(sizes) == [2, 2, 2, 2, 5]  # 2 + 2 > 3; one big request still runs (alone)


async def test_a_bad_request_fails_alone() -> None:
    async with batcher(FakeRunner()).running() as b:
        good, bad = job(["fine"]), job(["too long"])
        b.submit(good)
        b.submit(bad)
        assert await good.future == [(0, 1.0)]
        with pytest.raises(BadInput, match="too long"):
            await bad.future


async def test_an_engine_failure_fails_its_batch_not_the_batcher() -> None:
    runner = FakeRunner(fail=True)
    async with batcher(runner).running() as b:
        first = job(["a"])
        b.submit(first)
        with pytest.raises(ServiceError, match="inference failed"):
            await first.future
        runner.fail = False
        second = job(["b"])
        b.submit(second)
        assert await second.future == [(0, 1.0)]


async def test_full_queue_is_429_with_retry_after() -> None:
    async with batcher(FakeRunner(delay=0.05), queue_limit=2, batch_wait_ms=200).running() as b:
        jobs = [job(["a"]), job(["b"])]
        for j in jobs:
            b.submit(j)
        with pytest.raises(Overloaded) as err:
            b.submit(job(["c"]))
        assert err.value.status == 429 and int(err.value.headers["Retry-After"]) >= 1
        await asyncio.gather(*(j.future for j in jobs))


async def test_degrading_starts_at_the_configured_fill() -> None:
    async with batcher(FakeRunner(), queue_limit=4, degrade_at=0.5, batch_wait_ms=200).running() as b:
        jobs = [job(["a"]), job(["b"])]
        b.submit(jobs[0])
        assert not b.degrading
        b.submit(jobs[1])
        assert b.degrading
        await asyncio.gather(*(j.future for j in jobs))
        assert not b.degrading
    async with batcher(FakeRunner(), queue_limit=1, degrade_at=None, batch_wait_ms=100).running() as b:
        j = job(["a"])
        b.submit(j)
        assert not b.degrading
        await j.future


async def test_expired_and_abandoned_work_is_dropped_unrun() -> None:
    runner = FakeRunner()
    async with batcher(runner, batch_wait_ms=100).running() as b:
        expired, abandoned, kept = job(["late"], timeout=0.01), job(["gone"]), job(["kept"])
        for j in (expired, abandoned, kept):
            b.submit(j)
        abandoned.future.cancel()  # what the route does when its client disconnects
        assert await kept.future == [(0, 1.0)]
        with pytest.raises(DeadlineExceeded):
            await expired.future
    ran = [item for _, _, groups in runner.calls for g in groups for item in g]
    assert ran == ["kept"]


async def test_wait_estimate_grows_with_the_backlog() -> None:
    async with batcher(FakeRunner(), batch_wait_ms=100).running() as b:
        empty = b.wait_estimate_ms()
        jobs = [job(["a"]) for _ in range(3)]
        for j in jobs:
            b.submit(j)
        assert b.wait_estimate_ms() == pytest.approx(empty + 3.0, abs=0.5)
        await asyncio.gather(*(j.future for j in jobs))


async def test_shutdown_finishes_queued_work_and_refuses_new() -> None:
    runner = FakeRunner(delay=0.02)
    b = batcher(runner, batch_wait_ms=50)
    async with b.running():
        jobs = [job([str(i)], SMALL if i % 2 else BIG) for i in range(6)]
        for j in jobs:
            b.submit(j)
    assert all(j.future.done() and not j.future.cancelled() for j in jobs)
    with pytest.raises(NotReady):
        b.submit(job(["late"]))


async def test_a_batch_waits_for_batch_wait_ms_then_runs_and_the_loop_lives_on() -> None:
    # The fill wait ends in asyncio.wait_for's timeout: on Python 3.10 that is asyncio.TimeoutError, not the
    # builtin, and a missed catch killed the loop (requests then hang: the outer wait_for turns that into a failure).
    runner = FakeRunner()
    async with batcher(runner, batch_wait_ms=300).running() as b:
        first, second = job(["a"]), job(["b"])
        b.submit(first)
        await asyncio.sleep(0.01)  # the loop is inside the fill wait now
        b.submit(second)
        assert await asyncio.wait_for(asyncio.gather(first.future, second.future), 5) == [[(0, 1.0)]] * 2
        assert second.started is not None and second.started - first.arrived >= 0.29  # it waited for the group
        third = job(["c"])  # a later request: the loop survived the timeout
        b.submit(third)
        assert await asyncio.wait_for(third.future, 5) == [(0, 1.0)]
    assert [[i for g in groups for i in g] for _, _, groups in runner.calls] == [["a", "b"], ["c"]]
