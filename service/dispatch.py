"""One inference request from body to outputs: limits, size (sparsity and depth) and ordering choice, admission,
and the wait for its batch.

The wait ends at the first of: the result, the deadline (504; queued work is dropped), or the client
disconnecting (nothing more is done for it).
"""

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from dynsparse.errors import InputError
from dynsparse.masks import layers_kept
from service.codec import Endpoint, Item
from service.errors import BadInput, ClientGone, DeadlineExceeded
from service.jobs import Job, JobKey
from service.metrics import size_label
from service.runtime import Runtime
from service.schemas import SizedRequest
from service.sizes import Choice


@dataclass(frozen=True)
class Outcome:
    """A served request: its outputs in input order and the `Served` fields of the response."""

    outputs: list[Any]
    served: dict[str, Any]
    tokens: int = 0  # tokens the model read for it (specials and every QA window included)
    characters: int = 0  # characters of its inputs
    tokenize_ms: float = 0.0  # its batch's tokenizer time (shared with the batch's other requests)


async def dispatch(rt: Runtime, request: Request, task: Endpoint, body: SizedRequest[Any]) -> Outcome:
    """Serve `body` on `task`; raises a `ServiceError` (422/429/503/504) or `ClientGone`."""
    arrived = getattr(request.state, "arrived", time.monotonic())  # stamped by the middleware, before the body
    _check_limits(rt, body.inputs)
    depth, language = _depth_and_language(rt, body)
    choice = rt.policy.select(body.sparsity, body.size, body.latency_budget_ms)
    rows, seq_len = _workload(rt, task, body.inputs)
    rt.planner.calibration.arrivals.note(time.monotonic())
    wait_ms, queued = rt.batcher.wait_estimate_ms(), rt.batcher.queued_keys()
    joinable = _joinable(rt, queued, task, depth, language) if choice.budget_ms is not None else frozenset()
    # an operator's default budget is planned at full depth: with a depth, an upper bound of the latency
    sparsity, degraded, reason = _size_for(rt, choice, rows, seq_len, wait_ms, joinable)
    structure = rt.engine.structure(sparsity, depth, language)
    full = layers_kept(structure) == rt.engine.layers
    shadowed = rt.shadow is not None and rt.shadow.wants(sparsity, full, language)
    job = Job(
        task,
        body.inputs,
        sparsity,
        structure,
        deadline=arrived + rt.settings.request_timeout_s,
        language=language,
        cost_ms=rt.planner.cost_ms(sparsity, rows, seq_len),
        overhead_ms=rt.planner.overhead_ms(sparsity, seq_len),
        arrived=arrived,
    )
    job.expected_ms = rt.planner.expected_ms(sparsity, wait_ms, rows, seq_len, job.key in queued)
    job.keep_rows = shadowed and task == "tokens"  # tags are compared as distributions: keep them
    rt.batcher.submit(job)
    try:
        outputs = await _wait(rt, job, request)
    except DeadlineExceeded:  # the slowest of all: the latency margin must learn of it too. Its real time is
        # unknown, only at least the deadline: never less than predicted (a censored sample may not lower it)
        elapsed_ms = (time.monotonic() - arrived) * 1000
        rt.batcher.observe_latency(job, max(elapsed_ms, job.expected_ms or 0.0))
        raise
    latency_ms = (time.monotonic() - arrived) * 1000
    _observe_when_sent(rt, request, job, arrived)
    met = None if choice.budget_ms is None else latency_ms <= choice.budget_ms
    _record(rt, request, sparsity, latency_ms, degraded, met)
    _account_slo(rt, sparsity, met, reason)
    if shadowed and rt.shadow is not None:  # the dense re-run waits in the idle lane: never ahead of real work
        rt.shadow.follow(task, job, outputs, seq_len)
    served = {
        "sparsity": sparsity,
        "size": choice.name,
        "latency_ms": round(latency_ms, 3),
        "queue_ms": round(((job.started or arrived) - arrived) * 1000, 3),
        "inference_ms": round(job.inference_ms, 3),
        "budget_met": met,
        "degraded": degraded,
        "size_reason": reason,
        "depth": layers_kept(structure),
        "language": language,
    }
    chars = sum(_chars(x) for x in body.inputs)
    return Outcome(outputs, served, job.tokens, chars, round(job.tokenize_ms, 3))


def _account_slo(rt: Runtime, sparsity: float, met: bool | None, reason: str) -> None:
    """The SLO tracker counts budgets met and why a size was picked (a budget only where it shrank the model)."""
    if rt.slo is None:
        return
    if met is not None:
        rt.slo.record(sparsity, met)
    if reason in ("budget", "overload", "floor") and (reason != "budget" or sparsity > rt.policy.low):
        rt.slo.decided(reason)


def _observe_when_sent(rt: Runtime, request: Request, job: Job, arrived: float) -> None:
    """The latency margin learns from the time to the response's last byte (`middleware.RequestGuard` calls back):
    what a client waits includes encoding the response and the loop's turn to send it. Without the middleware
    (no arrival stamp), from now."""

    def observe() -> None:
        rt.batcher.observe_latency(job, (time.monotonic() - arrived) * 1000)

    state = request.scope.get("state", {})
    if "arrived" in state:
        state.setdefault("on_sent", []).append(observe)
    else:
        observe()


def _depth_and_language(rt: Runtime, body: SizedRequest[Any]) -> tuple[int | None, str | None]:
    """The request's depth (None: every layer) and ordering (None: the shared one), checked against the model:
    a depth over its layers, or a language it has no ordering for (when it has per-language ones), is a 422."""
    try:
        return rt.engine.check_depth(body.depth), rt.engine.check_language(body.language)
    except InputError as e:
        raise BadInput(str(e)) from None


def _chars(item: Item) -> int:
    """Characters of a text, or of all texts of a pair, a word list, a question and its context."""
    return len(item) if isinstance(item, str) else sum(len(x) for x in item)


def _workload(rt: Runtime, task: Endpoint, inputs: Sequence[Item]) -> tuple[int, int]:
    """(model rows, tokens per row) predicted for a request, guessed from its characters (the planner's input)."""
    if task != "answer":
        return len(inputs), rt.planner.estimate_tokens(max(_chars(x) for x in inputs))
    window = rt.engine.window  # a long context is read in windows: one row each
    rows = sum(rt.planner.estimate_windows(_chars(x), window) for x in inputs)
    return rows, min(window, rt.planner.estimate_tokens(max(_chars(x) for x in inputs)))


def check_limits(rt: Runtime, inputs: Sequence[Item]) -> None:
    """The operator's request limits (texts per request, characters per text): a `BadInput` past them."""
    _check_limits(rt, inputs)


def _check_limits(rt: Runtime, inputs: Sequence[Item]) -> None:
    """The operator's request limits, checked before any tokenizing (tokens are checked in the batch)."""
    s = rt.settings
    if len(inputs) > s.max_inputs:
        raise BadInput(f"{len(inputs)} inputs; at most {s.max_inputs} per request")
    for i, item in enumerate(inputs):
        if _chars(item) > s.max_text_chars:
            raise BadInput(f"inputs[{i}] has {_chars(item)} characters; the limit is {s.max_text_chars}")


def _joinable(
    rt: Runtime, queued: set[JobKey], task: Endpoint, depth: int | None, language: str | None
) -> frozenset[float]:
    """Candidate sizes with a batch queued for this task, depth and ordering: the request would join it."""
    cands = rt.policy.candidates()
    return frozenset(s for s in cands if (task, rt.engine.structure(s, depth, language), language) in queued)


def _size_for(
    rt: Runtime, choice: Choice, n_inputs: int, seq_len: int, wait_ms: float, joinable: frozenset[float]
) -> tuple[float, bool, str]:
    """(sparsity, degraded, reason): the choice, a budget's plan (behind `wait_ms`, joining a queued batch of a size
    in `joinable` if it picks one), or under load the smallest size; the agreement floor (`service.floor`) keeps
    budgets and overload off sizes below it. reason: requested, default, budget, floor or overload."""
    cands = rt.policy.candidates()
    allowed = rt.floor.allowed(cands) if rt.floor is not None else cands
    if choice.budget_ms is not None:
        rate = rt.planner.calibration.arrivals.per_s(time.monotonic())
        budget = max(0.0, choice.budget_ms - rt.settings.budget_overhead_ms)  # the server's share of the budget
        plan = rt.planner.pick(budget, wait_ms, n_inputs, seq_len, allowed, joinable, rate)
        sparsity, reason = plan.sparsity, "budget"
        if (
            len(allowed) < len(cands)
            and sparsity < rt.planner.pick(budget, wait_ms, n_inputs, seq_len, cands, joinable, rate).sparsity - 1e-9
        ):
            reason = "floor"  # the budget alone would have gone smaller
    else:
        sparsity = rt.policy.low if choice.sparsity is None else choice.sparsity
        reason = "default" if choice is rt.policy.default else "requested"
        if choice.name is not None and rt.floor is not None:
            floored = rt.floor.for_name(choice.name, sparsity, cands)
            sparsity, reason = (floored, "floor") if floored != sparsity else (sparsity, reason)
    smallest = max(allowed)
    if rt.batcher.degrading and not choice.exact and sparsity < smallest:
        return smallest, True, "overload"  # an exact sparsity is a contract; sizes by name, budget or default shrink
    return sparsity, False, reason


async def _wait(rt: Runtime, job: Job, request: Request) -> list[Any]:
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        timeout = max(0.0, job.deadline - time.monotonic())
        waiting: set[asyncio.Future[Any]] = {job.future, gone}
        done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if job.future.done() and not job.future.cancelled():
        return job.future.result()  # the outputs, or the batcher's error for this job
    job.future.cancel()  # still queued or running: the batcher drops it or discards its result
    reason = "disconnect" if gone in done else "deadline"
    rt.metrics.dropped.labels(reason).inc()
    if reason == "disconnect":
        raise ClientGone()
    raise DeadlineExceeded(f"no answer within the {rt.settings.request_timeout_s} s deadline; the work was dropped")


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body was read, so the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _record(
    rt: Runtime, request: Request, sparsity: float, latency_ms: float, degraded: bool, met: bool | None
) -> None:
    endpoint, size = request.url.path, size_label(sparsity)
    rt.metrics.requests.labels(endpoint, size, "200").inc()
    rt.metrics.request_time.labels(endpoint, size).observe(latency_ms / 1000)
    if degraded:
        rt.metrics.degraded.inc()
    if met is not None:
        rt.metrics.budget.labels(str(met).lower()).inc()
