"""What the lifespan builds: the engine, its batcher, the size rules, the latency profile and the size table.

Start-up order: load the checkpoint (off the loop), resolve sizes, start the worker, measure (or read the
cached) latency profile, warm up every named size, freeze the heap for the garbage collector; only then does the
server take requests.
"""

import asyncio
import gc
import hashlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from dynsparse.cost import level_costs
from dynsparse.heads import head_params
from dynsparse.metadata import CheckpointMeta, Depth
from service.batcher import Batcher
from service.engine import Engine, default_batch_wait_ms
from service.floor import Floor
from service.lane import IdleLane
from service.metrics import Metrics
from service.planner import Calibration, LatencyProfile, Planner, TailResidual, load_profile, save_profile
from service.schemas import Level, Measurement, SizesResponse
from service.settings import Settings
from service.shadow import AgreementBook, Shadow
from service.sizes import SizePolicy
from service.slo import Slo

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The loaded service; routes reach it through `deps.RuntimeDep`."""

    settings: Settings
    engine: Engine
    policy: SizePolicy
    planner: Planner
    batcher: Batcher
    metrics: Metrics
    sizes: SizesResponse
    ready: bool = True
    shadow: Shadow | None = field(default=None)  # quality on live traffic (`service.shadow`, `floor`, `slo`)
    floor: Floor | None = field(default=None)
    slo: Slo | None = field(default=None)


@asynccontextmanager
async def open_runtime(settings: Settings, metrics: Metrics) -> AsyncIterator[Runtime]:
    """Load, profile and warm up; on exit stop taking work and finish what is queued."""
    engine = await asyncio.to_thread(Engine.load, settings)
    policy = SizePolicy.build(settings, engine.trained_range)
    batcher = Batcher(
        engine,
        settings.max_batch_size,
        settings.batch_wait_ms if settings.batch_wait_ms is not None else default_batch_wait_ms(engine.device),
        settings.queue_limit,
        settings.degrade_at,
        metrics,
        Calibration(latency=TailResidual(quantile=settings.budget_quantile)),
        IdleLane(settings.shadow_queue_limit, settings.shadow_inputs) if settings.shadow_fraction > 0 else None,
    )
    async with batcher.running():
        # warmed before the profile, which must not time a traced graph's two slow first calls: the named sizes,
        # every size a budget may pick and the profile's levels
        levels = {*_warm_sizes(policy), *policy.candidates(), *_profile_levels(policy, settings.profile_levels)}
        await batcher.call(engine.warmup, sorted(levels))
        profile = await batcher.call(_profile, engine, policy, settings)
        planner = Planner(profile.monotone(), settings.max_batch_size, engine.max_tokens, batcher.calibration)
        table = size_table(engine, policy, planner.profile, raw=profile)
        runtime = Runtime(settings, engine, policy, planner, batcher, metrics, table)
        _add_quality(runtime)
        log.info(
            "serving %s on %s: sparsity %s..%s, sizes %s",
            settings.checkpoint,
            engine.device_name,
            policy.low,
            policy.high,
            dict(policy.named),
        )
        with frozen_heap():
            try:
                yield runtime
            finally:
                runtime.ready = False  # draining: new requests get 503, queued ones still run


def _add_quality(rt: Runtime) -> None:
    """Shadow agreement, the agreement floor and SLO goodput, their metrics in the app's registry."""
    s, meta = rt.settings, rt.engine.model.meta
    book = AgreementBook(rt.metrics.registry)
    rt.shadow = Shadow(
        s.shadow_fraction,
        s.shadow_inputs,
        book,
        rt.batcher,
        rt.engine.structure,
        rt.planner,
        timeout_s=s.request_timeout_s,
    )
    levels = [dict(r) for r in meta.levels]
    stored = {round(float(r["sparsity"]), 6): r for r in levels if "sparsity" in r}
    rt.floor = Floor.build(
        rt.engine.endpoint,
        book,
        rt.policy,
        levels,
        _metric(meta, stored),
        s.min_agreement,
        s.min_agreement_sizes,
        s.agreement_min_samples,
    )
    rt.slo = Slo(rt.metrics.registry, s.slo_window_s)


_frozen = 0  # servers of this process inside `frozen_heap` (the collector's freeze is process-wide)
_frozen_lock = threading.Lock()


@contextmanager
def frozen_heap() -> Iterator[None]:
    """While serving, the garbage collector skips everything that exists once the server is up (the model,
    torch, transformers: about 430k objects). A full collection over them paused the whole server for 160 ms
    in the middle of load (measured with gc.callbacks), the main cause of missed latency budgets; afterwards
    it scans only what requests create. The freeze is process-wide: each server that starts freezes what exists
    then, and the heap goes back to the collector when the last server of the process stops."""
    global _frozen
    with _frozen_lock:
        _frozen += 1
        gc.collect()
        gc.freeze()
    try:
        yield
    finally:
        with _frozen_lock:
            _frozen -= 1
            if _frozen == 0:
                gc.unfreeze()


def _profile_levels(policy: SizePolicy, n: int) -> list[float]:
    span = policy.high - policy.low
    return sorted({policy.snap(round(policy.low + span * i / (n - 1), 4)) for i in range(n)})


def _warm_sizes(policy: SizePolicy) -> list[float]:
    default = [policy.default.sparsity] if policy.default.sparsity is not None else []
    return sorted({*policy.named.values(), *default, policy.smallest})


def _profile(engine: Engine, policy: SizePolicy, settings: Settings) -> LatencyProfile:
    """The cached profile of this checkpoint on this device and dtype, else a new measurement (cached)."""
    levels = _profile_levels(policy, settings.profile_levels)
    batches, lens = settings.profile_batch_sizes, settings.profile_seq_lens
    traced = engine.graphs is not None  # the graphs are timed, not the eager forward
    files = dict(engine.model.meta.files)
    key = json.dumps([files, engine.device_name, torch.__version__, levels, batches, lens, traced])
    path = None
    if settings.profile_cache_dir is not None:
        name = f"{settings.checkpoint.resolve().name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
        path = settings.profile_cache_dir / name
        cached = load_profile(path)
        if cached is not None:
            log.info("latency profile from %s", path)
            return cached
    log.info("measuring latency: %d sizes x batch %s x length %s", len(levels), batches, lens)
    profile = engine.profile(levels, batches, lens)
    for p in profile.points:
        log.info("  sparsity %.3f  batch %3d  length %4d  %8.3f ms", p.sparsity, p.batch, p.seq_len, p.latency_ms)
    if path is not None:
        save_profile(path, profile)
    return profile


_METRICS = (
    "accuracy",
    "f1",
    "exact_match",
    "accuracy_at_1",
    "precision",
    "recall",
    "matthews_correlation",
    "pearson",
    "spearmanr",
)


def _metric(meta: CheckpointMeta, stored: Mapping[float, Mapping[str, Any]]) -> str | None:
    """The checkpoint's headline metric (older checkpoints: the first usual metric its level table has)."""
    if meta.main_metric is not None:
        return meta.main_metric
    return next((k for k in _METRICS if any(k in r for r in stored.values())), None)


def size_table(engine: Engine, policy: SizePolicy, profile: LatencyProfile, raw: LatencyProfile) -> SizesResponse:
    """GET /v1/sizes: per level the checkpoint's accounting and metrics, with latency on this server
    (predicted from `profile`; the `raw` measurements are listed as they were taken)."""
    batch = max(p.batch for p in profile.points)
    seq_len = max(p.seq_len for p in profile.points)
    stored = {round(float(r["sparsity"]), 6): dict(r) for r in engine.model.meta.levels if "sparsity" in r}
    levels = [
        _level(engine, policy, profile, s, stored.get(round(s, 6), {}), batch, seq_len) for s in policy.candidates()
    ]
    d = policy.default
    default = {"sparsity": d.sparsity, "size": d.name} if d.budget_ms is None else {"latency_budget_ms": d.budget_ms}
    return SizesResponse(
        task=engine.task,
        endpoint=f"/v1/{engine.endpoint}",
        endpoints=[f"/v1/{t}" for t in engine.endpoints],
        levels=levels,
        sizes=dict(policy.named),
        default=default,
        allowed=(policy.low, policy.high),
        grid=list(policy.grid) if policy.grid else None,
        metric=_metric(engine.model.meta, stored),
        device=profile.device,
        latency_batch=batch,
        latency_seq_len=seq_len,
        profile=[Measurement(**asdict(p)) for p in raw.points],
        layers=engine.layers,
        depth=_depth_record(engine.model.meta.depth),
        languages=engine.languages,
    )


def _depth_record(depth: Depth | None) -> dict[str, Any] | None:
    """The checkpoint's depth record (order, rule, min_layers), or None when it has none."""
    return (depth.to_json() or None) if depth is not None else None


def _level(
    engine: Engine,
    policy: SizePolicy,
    profile: LatencyProfile,
    s: float,
    stored: dict[str, Any],
    batch: int,
    seq_len: int,
) -> Level:
    head = engine.model.head
    costs = level_costs(engine.model.shape, engine.structure(s), seq_len, head_params(head), head.flops(seq_len))
    return Level(
        sparsity=s,
        names=sorted(k for k, v in policy.named.items() if v == s),
        params=int(costs["params"]),
        params_encoder=int(costs["params_encoder"]),
        params_embeddings=int(costs["params_embeddings"]),
        flops=int(costs["flops"]),
        latency_ms=round(profile.predict(s, batch, seq_len), 3),
        **{k: stored[k] for k in _METRICS if k in stored},
    )
