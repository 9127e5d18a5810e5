"""The idle lane: low-priority work (shadow re-runs at the dense size) that the batcher runs only when no real
request is queued.

It never delays or displaces real work beyond one small batch: the lane is bounded (the oldest job leaves when a
new one comes), its jobs expire, its batches are small (a real request that arrives while one runs waits for that
one batch at most), and the batcher takes from it only after its real queue has stayed empty for `idle_ms` (so
the handlers of the batch just finished can send their responses first). Under load the real queue never
empties: lane jobs expire or are pushed out, unrun (dropped first).
"""

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from service.errors import NotReady


class IdleLane:
    """A bounded queue of jobs (`service.jobs.Job`) run only when the server is otherwise idle.

    Example:
        >>> lane = IdleLane(limit=64, batch_items=4, idle_ms=5)
        >>> lane.offer(job)          # False when the lane is off; the oldest job is dropped when full
    """

    def __init__(
        self, limit: int = 64, batch_items: int = 4, idle_ms: float = 5.0, on_drop: Callable[[str], None] | None = None
    ) -> None:
        self.limit = limit
        self.batch_items = batch_items
        self.idle_s = idle_ms / 1000
        self.on_drop = on_drop or (lambda reason: None)
        self._jobs: deque[Any] = deque()

    def __len__(self) -> int:
        return len(self._jobs)

    def offer(self, job: Any) -> bool:
        """Queue `job`; a full lane drops its oldest job to make room. False when the lane holds nothing."""
        if self.limit <= 0:
            return False
        while len(self._jobs) >= self.limit:
            self._fail(self._jobs.popleft(), "full")
        self._jobs.append(job)
        return True

    def head(self) -> Any | None:
        """The oldest live job (expired ones are dropped first), or None."""
        now = time.monotonic()
        while self._jobs and (self._jobs[0].future.done() or self._jobs[0].deadline <= now):
            self._fail(self._jobs.popleft(), "expired")
        return self._jobs[0] if self._jobs else None

    def take(self, key: Any) -> list[Any]:
        """The oldest jobs of one group, up to `batch_items` inputs (a first job over it runs alone)."""
        batch: list[Any] = []
        n = 0
        for job in self._jobs:
            if job.key != key:
                continue
            if batch and n + len(job.items) > self.batch_items:
                break
            batch.append(job)
            n += len(job.items)
        gone = set(map(id, batch))
        self._jobs = deque(j for j in self._jobs if id(j) not in gone)
        return batch

    def clear(self) -> None:
        """Drop everything (the server is stopping)."""
        while self._jobs:
            self._fail(self._jobs.popleft(), "shutdown")

    def _fail(self, job: Any, reason: str) -> None:
        if not job.future.done():
            job.future.set_exception(NotReady(f"idle work dropped ({reason})"))
        self.on_drop(reason)
