"""Serving under load: the real server on 127.0.0.1, real HTTP clients, mixed sizes.

Throughput and client-side p50/p95/p99 at 1/8/32/64 concurrent clients with dynamic batching, against the
same server serving one request at a time (max batch 1); then, at 32 clients, requests that carry a latency
budget instead of a size: budgets of 0.5x to 2x the p50 that mixed-size traffic sees at that load (without
planning, about half the requests would miss the 1x budget), and the share whose client-observed latency met
their budget.

    python bench/serve_load.py --model runs/default --out bench/results/serve_load [--quick]

summary.batching_throughput_ratio_32: requests/s with dynamic batching / one at a time, 32 clients.
summary.budget_met_fraction: requests whose client-observed latency <= their budget, 32 clients, 1x budget.
summary.smallest_budget_factor_met_99: the smallest budget (x the p50; full mode tries 0.5 to 2) that >= 99% met.
summary.engine_batching_ratio: the same ratio for the model work alone (the server's engine in this process: tokenize,
forward, decode; no HTTP, no queue), batches of the mean size the server formed at 32 clients against one request at
a time: the most batching can give on this device, whatever the server around it does.
"""

import asyncio
import gc
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import base_parser, device_name, plt, write_result  # noqa: E402

WORDS = (
    "a gripping funny film with a terrible script and wonderful actors that never quite "
    "lands its dull predictable ending but the score is moving"
).split()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    ckpt: str, device: str, max_batch: int, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`dynsparse serve` in a subprocess (`extra_env`: more settings); returns once /readyz answers 200."""
    port = _free_port()
    env = {
        **os.environ,
        "DYNSPARSE_MAX_BATCH_SIZE": str(max_batch),
        "DYNSPARSE_QUEUE_LIMIT": "1024",
        "DYNSPARSE_LOG_LEVEL": "warning",
        "DYNSPARSE_DEGRADE_AT": "null",
        **(extra_env or {}),
    }
    cmd = [sys.executable, "-m", "dynsparse.cli", "serve", ckpt, "--port", str(port), "--device", device]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, "/readyz", "server")
    except RuntimeError as e:
        raise SystemExit(str(e)) from None
    return proc, url


def wait_ready(proc: subprocess.Popen[bytes], url: str, path: str, name: str) -> None:
    """Poll `url + path` until it answers 200; RuntimeError if `proc` exits first or 300 s pass (then killed)."""
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before it was ready")
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{name} not ready in 300 s")


async def _client(
    session: aiohttp.ClientSession, bodies: list[dict[str, Any]], stop: float, out: list[dict[str, Any]]
) -> None:
    for body in bodies:
        if time.time() > stop:
            return
        t0 = time.perf_counter()
        async with session.post("/v1/classify", json=body) as r:
            data = await r.json() if r.status == 200 else {}
        ms = (time.perf_counter() - t0) * 1000
        out.append(
            {
                "status": r.status,
                "ms": ms,
                "budget": body.get("latency_budget_ms"),
                "server_budget_met": data.get("budget_met"),
                "sparsity": data.get("sparsity"),
            }
        )


async def _get(session: aiohttp.ClientSession, path: str) -> None:
    async with session.get(path) as r:
        await r.read()


def _bodies(rng: random.Random, n: int, budget_ms: float | None, texts: list[str] | None) -> list[dict[str, Any]]:
    bodies = []
    for _ in range(n):
        text = rng.choice(texts) if texts else " ".join(rng.choices(WORDS, k=rng.randrange(8, 40)))
        size = {"latency_budget_ms": budget_ms} if budget_ms else {"sparsity": rng.choice([0.0, 0.3, 0.6, 0.9])}
        bodies.append({"inputs": [text], **size})
    return bodies


def run_load(
    url: str,
    clients: int,
    total: int,
    seconds: float,
    budget_ms: float | None = None,
    texts: list[str] | None = None,
) -> dict[str, Any]:
    """`clients` concurrent clients share `total` requests (or stop after `seconds`); one text each, drawn from
    `texts` (default: random bags of words)."""
    rng = random.Random(clients)
    results: list[dict[str, Any]] = []
    per = max(1, total // clients)

    async def main() -> float:
        # clients are built and connected before the clock starts: their set-up would count as server latency.
        # aiohttp, not httpx: it spends 0.25 ms of CPU per request against 0.97 (measured), CPU the server shares
        pool = [
            aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=60), connector=aiohttp.TCPConnector(limit=1))
            for _ in range(clients)
        ]
        try:
            await asyncio.gather(*(_get(c, "/healthz") for c in pool))
            # nor may the load generator's own garbage collector pause it: a full collection over this process's
            # heap (imports, clients: ~290k objects) took 140-160 ms mid-run, counted as the server's latency
            gc.collect()
            gc.freeze()
            stop = time.time() + seconds
            t0 = time.perf_counter()
            await asyncio.gather(*(_client(c, _bodies(rng, per, budget_ms, texts), stop, results) for c in pool))
            return time.perf_counter() - t0
        finally:
            await asyncio.gather(*(c.close() for c in pool))

    cpu0 = time.process_time()
    wall = asyncio.run(main())
    client_cpu = time.process_time() - cpu0  # the load generator's own CPU: it shares the machine with the server
    ok = sorted(r["ms"] for r in results if r["status"] == 200)
    row = {
        "clients": clients,
        "requests": len(results),
        "ok": len(ok),
        "seconds": round(wall, 2),
        "throughput_rps": round(len(ok) / wall, 2),
        "p50_ms": _pct(ok, 50),
        "p95_ms": _pct(ok, 95),
        "p99_ms": _pct(ok, 99),
        "errors": len(results) - len(ok),
        "client_cpu_cores": round(client_cpu / wall, 2),
    }
    if budget_ms:
        row["budget_ms"] = budget_ms
        row["budget_met_fraction"] = round(
            sum(r["ms"] <= budget_ms for r in results if r["status"] == 200) / max(len(results), 1), 4
        )
        row["server_budget_met_fraction"] = round(
            sum(bool(r["server_budget_met"]) for r in results) / max(len(results), 1), 4
        )
        row["mean_sparsity"] = round(statistics.mean(r["sparsity"] for r in results if r["sparsity"] is not None), 3)
    print(row, flush=True)
    return row


def mean_batch(url: str) -> tuple[float, float]:
    """(rows, batches) the server has run so far, from its Prometheus histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    rows = batches = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == "dynsparse_batch_size_sum":
                rows += sample.value
            elif sample.name == "dynsparse_batch_size_count":
                batches += sample.value
    return rows, batches


def engine_ceiling(ckpt: str, device: str, rows_per_batch: int, n: int) -> dict[str, Any]:
    """Per-request ms of the engine alone: one request at a time, and in batches of `rows_per_batch` requests of
    one size (as the batcher groups them), alternated 3 times (medians); threads as the server sets them."""
    from dynsparse.data import group_rows
    from service.engine import Engine
    from service.settings import Settings

    engine = Engine.load(Settings(checkpoint=Path(ckpt), device=device))
    bodies = _bodies(random.Random(0), n, None, None)
    by_size = {s: [bodies[i]["inputs"] for i in idx] for s, idx in group_rows([b["sparsity"] for b in bodies]).items()}

    def one() -> None:
        for body in bodies:
            engine.run("classify", engine.structure(body["sparsity"]), [body["inputs"]])

    def batched() -> None:
        for s, requests in by_size.items():
            for lo in range(0, len(requests), rows_per_batch):
                engine.run("classify", engine.structure(s), requests[lo : lo + rows_per_batch])

    one(), batched()  # warm-up
    times: dict[str, list[float]] = {"one_at_a_time": [], "batched": []}
    for _ in range(3):
        for name, fn in (("one_at_a_time", one), ("batched", batched)):
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1000 / n)
    ms = {k: round(statistics.median(v), 3) for k, v in times.items()}
    row = {
        "rows_per_batch": rows_per_batch,
        "threads": torch.get_num_threads(),
        "one_at_a_time_ms": ms["one_at_a_time"],
        "batched_ms": ms["batched"],
        "ratio": round(ms["one_at_a_time"] / ms["batched"], 2),
    }
    print({"engine": row}, flush=True)
    return row


def _pct(values: list[float], q: int) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(len(values) * q / 100))], 2)


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--budget_ms", type=float, default=None, help="1x budget (default: p50 of mixed sizes, 32 clients)")
    args = p.parse_args()
    device = device_name(args.device)  # before the engine below sets its own thread count
    if not args.model:
        raise SystemExit("--model CKPT is required (e.g. runs/default from `python train.py`)")
    total, seconds = (200, 40.0) if args.quick else (1000, 120.0)
    levels = [1, 8, 32] if args.quick else [1, 8, 32, 64]
    rows: dict[str, list[dict[str, Any]]] = {"batched": [], "one_at_a_time": []}
    for mode, max_batch in (("batched", 32), ("one_at_a_time", 1)):
        proc, url = start_server(args.model, args.device, max_batch)
        try:
            for c in levels if mode == "batched" else [1, 32]:
                before = mean_batch(url)
                rows[mode].append(run_load(url, c, total, seconds))
                after = mean_batch(url)
                rows[mode][-1]["mean_batch_rows"] = round((after[0] - before[0]) / max(after[1] - before[1], 1), 2)
            if mode == "batched":
                p50_32 = next(r for r in rows[mode] if r["clients"] == 32)["p50_ms"] or 100.0
                budget = args.budget_ms or round(p50_32, 1)
                factors = (0.5, 1, 2) if args.quick else (0.5, 0.75, 1, 1.25, 1.5, 2)
                budget_rows = [run_load(url, 32, total, seconds, budget_ms=round(f * budget, 1)) for f in factors]
                for f, r in zip(factors, budget_rows, strict=True):
                    r["budget_factor"] = f
        finally:
            proc.terminate()
            proc.wait(30)
    b32 = next(r for r in rows["batched"] if r["clients"] == 32)
    s32 = next(r for r in rows["one_at_a_time"] if r["clients"] == 32)
    one_x = next(r for r in budget_rows if r["budget_factor"] == 1)
    engine = engine_ceiling(args.model, args.device, max(1, round(b32["mean_batch_rows"])), 64 if args.quick else 256)
    summary = {
        "batching_throughput_ratio_32": round(b32["throughput_rps"] / max(s32["throughput_rps"], 1e-9), 2),
        "budget_met_fraction": one_x["budget_met_fraction"],
        "budget_ms": one_x["budget_ms"],
        "budget_met_by_budget": {str(r["budget_ms"]): r["budget_met_fraction"] for r in budget_rows},
        "smallest_budget_factor_met_99": next(
            (r["budget_factor"] for r in budget_rows if r["budget_met_fraction"] >= 0.99), None
        ),
        "engine_batching_ratio": engine["ratio"],
        "device": device,
    }
    out = Path(args.out)
    write_result(
        out,
        "serve_load",
        {"summary": summary, "rows": rows, "budgets": budget_rows, "engine": engine, "quick": args.quick},
    )
    pyplot = plt()
    fig, (a1, a2, a3) = pyplot.subplots(1, 3, figsize=(14, 4), dpi=120)
    for mode, rs in rows.items():
        a1.plot([r["clients"] for r in rs], [r["throughput_rps"] for r in rs], "o-", label=mode)
        a2.plot([r["clients"] for r in rs], [r["p99_ms"] for r in rs], "o-", label=f"{mode} p99")
    a1.set_xlabel("concurrent clients")
    a1.set_ylabel("requests / s")
    a2.set_xlabel("concurrent clients")
    a2.set_ylabel("client latency (ms)")
    for ax in (a1, a2):
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend()
    budgets = [r["budget_ms"] for r in budget_rows]
    a3.plot(budgets, [r["budget_met_fraction"] for r in budget_rows], "o-", label="met (client clock)")
    a3.plot(budgets, [r["server_budget_met_fraction"] for r in budget_rows], "s--", label="met (server clock)")
    a3.plot(budgets, [r["mean_sparsity"] for r in budget_rows], "^:", label="mean sparsity served")
    a3.axhline(0.99, color="grey", lw=0.8)
    a3.set_xlabel("latency budget (ms), 32 clients")
    a3.grid(alpha=0.3)
    a3.legend(fontsize=8)
    fig.suptitle(f"dynsparse serve, mixed sizes ({summary['device']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "serve_load.png")


if __name__ == "__main__":
    main()
