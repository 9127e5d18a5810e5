"""The idle lane and the batcher: idle work runs only when no real request waits, in small batches, and is
dropped first (pushed out when the lane is full, refused while the queue fills, expired, dropped at shutdown)."""

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest

from dynsparse.errors import InputError
from dynsparse.masks import Structure
from service.batcher import Batcher
from service.codec import Endpoint, Item
from service.errors import NotReady
from service.jobs import Job
from service.lane import IdleLane

pytestmark = pytest.mark.anyio
S: Structure = ((1, 8),)


class Recorder:
    """Records each batch's first item and size; each batch takes `delay` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay, self.batches = delay, []  # type: ignore[var-annotated]

    def run(
        self, task: Endpoint, structure: Structure, groups: Sequence[Sequence[Item]], language: str | None
    ) -> list[list[Any] | InputError]:
        self.batches.append([x for g in groups for x in g])
        time.sleep(self.delay)
        return [[(0, 1.0)] * len(g) for g in groups]


def make(items: Sequence[Item], timeout: float = 10.0) -> Job:
    return Job("classify", items, 0.5, S, deadline=time.monotonic() + timeout)


async def test_idle_work_runs_after_real_work_in_small_batches() -> None:
    runner = Recorder(delay=0.02)
    lane = IdleLane(limit=8, batch_items=2, idle_ms=5)
    async with Batcher(runner, max_batch_size=8, batch_wait_ms=0, queue_limit=16, lane=lane).running() as b:
        real = make(["r0"])
        b.submit(real)
        await asyncio.sleep(0.005)  # r0 runs; idle work and more real work arrive meanwhile
        idle = [make([f"i{k}"]) for k in range(4)]
        assert all(b.submit_idle(j) for j in idle)
        later = make(["r1"])
        b.submit(later)
        await asyncio.gather(real.future, later.future, *(j.future for j in idle))
    assert runner.batches[:2] == [["r0"], ["r1"]]  # the real request queued after the idle work still went first
    assert runner.batches[2:] == [["i0", "i1"], ["i2", "i3"]]  # then two small idle batches


async def test_idle_work_is_dropped_first() -> None:
    lane = IdleLane(limit=2, batch_items=1, idle_ms=5)
    async with Batcher(
        Recorder(delay=0.05), max_batch_size=1, batch_wait_ms=0, queue_limit=4, degrade_at=0.5, lane=lane
    ).running() as b:
        for k in range(3):
            b.submit(make([f"r{k}"]))
        assert b.degrading and not b.submit_idle(make(["refused"]))  # the queue is filling: no idle work
        first, second, third = make(["a"]), make(["b"]), make(["c"], timeout=0.01)
        b.lane.offer(first), b.lane.offer(second), b.lane.offer(third)
        with pytest.raises(NotReady):
            await first.future  # pushed out by the third
        with pytest.raises(NotReady):
            await third.future  # expired before the server was idle
        late = make(["d"])
        b.lane.offer(late)
    for job in (second, late):  # the real queue never emptied before the server stopped: dropped, never run
        with pytest.raises(NotReady):
            await job.future
