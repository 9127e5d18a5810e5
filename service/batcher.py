"""Dynamic batching on a bounded queue: requests of the same task, size and language ordering run together, off
the loop.

The event loop only queues and groups; model work runs in one worker thread (right on CPU, where torch
already uses every core per call, and on GPU, where one stream serialises work anyway). An idle worker
waits up to `batch_wait_ms` for a batch to fill; a busy one lets the queue fill by itself.

Every finished batch calibrates the planner: its measured time against the profile's prediction for it
(`planner.Calibration.inference`).
"""

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Protocol

from dynsparse.errors import InputError
from dynsparse.masks import Structure
from service.codec import Endpoint, Item
from service.errors import NotReady, Overloaded, ServiceError
from service.jobs import Job, JobKey, JobQueue, backlog_ms, settle
from service.lane import IdleLane
from service.metrics import Metrics, size_label
from service.planner import Calibration

log = logging.getLogger(__name__)


class Runner(Protocol):
    """What the batcher needs of an engine (tests pass a fake)."""

    def run(
        self, task: Endpoint, structure: Structure, groups: Sequence[Sequence[Item]], language: str | None
    ) -> list[list[Any] | InputError]: ...


class Batcher:
    """The queue in front of the engine.

    Example:
        >>> async with Batcher(engine, max_batch_size=32, batch_wait_ms=2, queue_limit=256).running() as b:
        ...     b.submit(job)
        ...     outputs = await job.future
    """

    def __init__(
        self,
        runner: Runner,
        max_batch_size: int,
        batch_wait_ms: float,
        queue_limit: int,
        degrade_at: float | None = None,
        metrics: Metrics | None = None,
        calibration: Calibration | None = None,
        lane: IdleLane | None = None,
    ) -> None:
        self.runner = runner
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000
        self.queue_limit = queue_limit
        self.degrade_at = degrade_at
        self.metrics = metrics or Metrics()
        self.calibration = calibration or Calibration()
        self._queue = JobQueue(self.metrics.queue_depth.set)
        self.lane = lane if lane is not None else IdleLane(limit=0)  # off unless given: see `submit_idle`
        self._busy_until = 0.0  # predicted end of the running batch (monotonic seconds)
        self._wake = asyncio.Event()
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dynsparse-engine")

    @asynccontextmanager
    async def running(self) -> AsyncIterator["Batcher"]:
        """Serve while inside; on exit refuse new work, finish what is queued, stop the worker."""
        task = asyncio.create_task(self._loop(), name="dynsparse-batcher")
        try:
            yield self
        finally:
            self._closing = True
            self._wake.set()
            await task
            self.lane.clear()
            self._executor.shutdown(wait=True)

    async def call(self, fn: Any, *args: Any) -> Any:
        """Run `fn(*args)` on the worker thread (start-up work: it never overlaps a batch)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- admission ---------------------------------------------------------------------------------
    @property
    def queue_length(self) -> int:
        """Requests waiting (not yet in a running batch)."""
        return len(self._queue)

    @property
    def accepting(self) -> bool:
        """False once draining for shutdown."""
        return not self._closing

    @property
    def degrading(self) -> bool:
        """True when the queue is filling: size-flexible requests should get the smallest size."""
        return self.degrade_at is not None and self.queue_length >= self.degrade_at * self.queue_limit

    def wait_estimate_ms(self) -> float:
        """Predicted wait of a request queued now: rest of the running batch + backlog + batching wait, the
        backlog scaled by how much slower than profiled batches have been running."""
        running = max(0.0, self._busy_until - time.monotonic()) * 1000
        backlog = self.calibration.inference.factor * backlog_ms(self._queue, self.max_batch_size)
        return running + backlog + self.batch_wait_s * 1000

    def submit(self, job: Job) -> None:
        """Queue `job`; a full queue raises `Overloaded` (429), a closing server `NotReady` (503)."""
        if self._closing:
            raise NotReady("the server is shutting down")
        if self.queue_length >= self.queue_limit:
            retry = math.ceil(self.wait_estimate_ms() / 1000)
            raise Overloaded(f"the queue is full ({self.queue_limit} requests waiting); retry later", retry)
        self._queue.append(job)
        self._wake.set()

    def submit_idle(self, job: Job) -> bool:
        """Queue low-priority `job` in the idle lane (run only when no real request waits); False when refused
        (the lane is off, the server is closing or the queue is filling)."""
        job.idle = True
        if self._closing or self.degrading or not self.lane.offer(job):
            return False
        self._wake.set()
        return True

    # -- the loop ----------------------------------------------------------------------------------
    async def _loop(self) -> None:
        while (head := await self._next_head()) is not None:
            if head.idle:  # nothing real is queued: one small batch of idle work
                idle = self.lane.take(head.key)
                if idle:
                    await self._run(idle)
                continue
            await self._fill(head)
            batch = self._queue.take(head.key, self.max_batch_size)
            if batch:
                await self._run(batch)

    async def _next_head(self) -> Job | None:
        """The oldest live job, waiting for one; None once closing with nothing left."""
        while True:
            if (head := self._queue.head()) is not None:
                return head
            if self._closing:
                return None
            self._wake.clear()
            if self.lane.head() is None:
                await self._wake.wait()
                continue
            try:  # idle work waits until the real queue has stayed empty for a moment
                await asyncio.wait_for(self._wake.wait(), self.lane.idle_s)
            except asyncio.TimeoutError:  # as in `_fill`: before 3.11 not the builtin TimeoutError
                idle: Job | None = self.lane.head()
                if not self._queue and idle is not None:
                    return idle

    async def _fill(self, head: Job) -> None:
        """Let `head`'s group fill up until `batch_wait_ms` after `head` arrived (or until it is full)."""
        while self._queue.group_size(head.key) < self.max_batch_size and not self._closing:
            remaining = head.arrived + self.batch_wait_s - time.monotonic()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11 (an alias since)
                return

    async def _run(self, batch: list[Job]) -> None:
        """Run one batch on the worker; settle every job (a failure fails this batch, never the server)."""
        task, structure, language = batch[0].key
        size = size_label(batch[0].sparsity)
        start = time.monotonic()
        predicted_ms = backlog_ms(batch, self.max_batch_size)
        self._busy_until = start + self.calibration.inference.factor * predicted_ms / 1000
        idle = batch[0].idle  # the served sizes' figures count client requests only
        for job in batch:
            job.started = start
            if not idle:
                self.metrics.queue_time.labels(size).observe(start - job.arrived)
        failed = False
        kept: list[list[Any] | None] = [None] * len(batch)
        try:
            groups = [j.items for j in batch]
            if any(j.keep_rows for j in batch):
                run_rows = self.runner.run_rows  # type: ignore[attr-defined]  # the engine's (`Engine.run_rows`)
                results, kept = await self.call(run_rows, task, structure, groups, language)
            else:
                results = await self.call(self.runner.run, task, structure, groups, language)
        except Exception as e:  # e.g. CUDA out of memory: this batch fails, the server goes on
            log.exception("batch of %d requests failed", len(batch))
            results = [ServiceError(f"inference failed: {type(e).__name__}")] * len(batch)
            failed = True
        finally:
            self._busy_until = 0.0
        elapsed = time.monotonic() - start
        if not failed:  # a failure's time says nothing about the device's speed
            self._calibrate(batch, elapsed * 1000, predicted_ms)
        if not idle:
            self.metrics.inference_time.labels(size).observe(elapsed)
            self.metrics.batch_size.labels(size).observe(sum(len(j.items) for j in batch))
        stats = getattr(self.runner, "last_run", None)  # the engine's token counts (a test's fake has none)
        tokens = list(getattr(stats, "tokens", [])) if not failed else []
        for k, (job, result, rows) in enumerate(zip(batch, results, kept, strict=True)):
            job.inference_ms = elapsed * 1000
            job.rows = rows
            if len(tokens) == len(batch):
                job.tokens, job.tokenize_ms = tokens[k], float(getattr(stats, "tokenize_ms", 0.0))
            settle(job, result)

    def _calibrate(self, batch: list[Job], elapsed_ms: float, predicted_ms: float) -> None:
        """Learn the device's speed from a finished batch (on the event loop, like every calibration update)."""
        self.calibration.inference.update(elapsed_ms, predicted_ms)
        self.metrics.correction.labels("inference").set(self.calibration.inference.factor)

    def observe_latency(self, job: Job, latency_ms: float) -> None:
        """Learn from a request's time to result, measured when its response was sent (`dispatch` asks the
        middleware to call back), so encoding and the loop's turn to send count, as the client waits for them."""
        if job.expected_ms is not None:
            self.calibration.latency.update(latency_ms, job.expected_ms)
            self.metrics.latency_margin.set(self.calibration.latency.margin_ms / 1000)

    def queued_keys(self) -> set[JobKey]:
        """Groups with a batch queued: a job joining one adds only its rows to the backlog."""
        return self._queue.keys()
