"""A request's work as the batcher sees it (`Job`), and the queue of them: grouped by what may share a batch,
oldest first, with dead jobs (deadline passed, client gone) forgotten before they cost anything."""

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from dynsparse.errors import InputError
from dynsparse.masks import Structure
from service.codec import Endpoint, Item
from service.errors import BadInput, DeadlineExceeded

JobKey = tuple[Endpoint, Structure, str | None]  # (task, structure, language): what jobs must share to share a batch


def _new_future() -> "asyncio.Future[list[Any]]":
    return asyncio.get_running_loop().create_future()


@dataclass(eq=False)
class Job:
    """One request's work: its inputs at one size and ordering, with its deadline and its predicted cost."""

    task: Endpoint
    items: Sequence[Item]
    sparsity: float
    structure: Structure  # the grouping key: equal structures run as one slice (layers of depth 0 skipped)
    deadline: float  # time.monotonic() after which the result is useless
    language: str | None = None  # a per-language ordering (None: the shared one); also part of the key
    cost_ms: float = 0.0  # predicted time its rows add to the batch it runs in
    overhead_ms: float = 0.0  # predicted time of a batch of its size besides the rows: paid once per batch
    expected_ms: float | None = None  # time to result predicted at admission (what calibrates `latency`)
    arrived: float = field(default_factory=time.monotonic)
    started: float | None = None
    inference_ms: float = 0.0
    tokens: int = 0  # its rows' tokens, when the runner reports them (`Engine.last_run`)
    tokenize_ms: float = 0.0  # its batch's tokenizer time (shared by the batch)
    idle: bool = False  # low-priority work of the idle lane (a shadow re-run), not a client's request
    keep_rows: bool = False  # keep each item's row outputs in `rows` (before decoding) for shadow agreement
    rows: list[Any] | None = None
    future: "asyncio.Future[list[Any]]" = field(default_factory=_new_future)

    @property
    def key(self) -> JobKey:
        """Jobs with equal keys may share a batch."""
        return self.task, self.structure, self.language


class JobQueue:
    """Jobs waiting for a batch, oldest first; `on_change(length)` hears every change of its length."""

    def __init__(self, on_change: Callable[[int], None] = lambda n: None) -> None:
        self._jobs: deque[Job] = deque()
        self.on_change = on_change

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[Job]:
        return iter(self._jobs)

    def append(self, job: Job) -> None:
        self._jobs.append(job)
        self.on_change(len(self._jobs))

    def head(self) -> Job | None:
        """The oldest live job, or None."""
        self.drop_dead()
        return self._jobs[0] if self._jobs else None

    def group_size(self, key: JobKey) -> int:
        """Inputs queued in one group."""
        return sum(len(j.items) for j in self._jobs if j.key == key)

    def keys(self) -> set[JobKey]:
        """Groups with a job queued."""
        return {j.key for j in self._jobs}

    def take(self, key: JobKey, max_items: int) -> list[Job]:
        """The oldest jobs of one group, up to `max_items` inputs (a bigger single request comes alone)."""
        self.drop_dead()
        batch: list[Job] = []
        n = 0
        for job in self._jobs:
            if job.key != key:
                continue
            if batch and n + len(job.items) > max_items:
                break
            batch.append(job)
            n += len(job.items)
        self._remove(batch)
        return batch

    def drop_dead(self) -> None:
        """Forget jobs whose client gave up (deadline or disconnect): dropped work costs nothing."""
        now = time.monotonic()
        dead = [j for j in self._jobs if j.future.done() or j.deadline <= now]
        for job in dead:
            if not job.future.done():
                job.future.set_exception(DeadlineExceeded("the request outlived its deadline while queued"))
        self._remove(dead)

    def _remove(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        gone = set(map(id, jobs))
        self._jobs = deque(j for j in self._jobs if id(j) not in gone)
        self.on_change(len(self._jobs))


def backlog_ms(jobs: Iterable[Job], max_batch_size: int) -> float:
    """Predicted (uncalibrated) time to run `jobs`: every job's rows, plus one batch overhead per batch each
    group needs: jobs of different sizes never share a batch, so a mixed queue runs as several."""
    rows: dict[JobKey, int] = {}
    overhead: dict[JobKey, float] = {}
    total = 0.0
    for job in jobs:
        rows[job.key] = rows.get(job.key, 0) + len(job.items)
        overhead[job.key] = max(overhead.get(job.key, 0.0), job.overhead_ms)
        total += job.cost_ms
    return total + sum(overhead[k] * math.ceil(n / max_batch_size) for k, n in rows.items())


def settle(job: Job, result: list[Any] | Exception) -> None:
    if job.future.done():  # its client left while it ran: the result is dropped
        return
    if isinstance(result, InputError):
        job.future.set_exception(BadInput(str(result)))
    elif isinstance(result, Exception):
        job.future.set_exception(result)
    else:
        job.future.set_result(result)
