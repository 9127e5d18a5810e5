"""Goodput under an SLO against a real peer server: open-loop Poisson arrivals at rising rates, one sentence each.

Contenders, each a real server on 127.0.0.1 serving all-MiniLM-L6-v2 (the same weights):
- Infinity (`infinity-emb`) with its torch engine, and with its optimum (ONNX Runtime) engine, dense;
- `dynsparse serve` at a fixed dense size (`sparsity: 0`);
- `dynsparse serve` with `latency_budget_ms` = the SLO on every request (the server picks the size), on a second
  server whose `budget_overhead_ms` is the p99 of client time - server time measured at the dense run's lowest rate.
Requests arrive as a Poisson process (open loop: an arrival never waits for earlier answers, and latency counts
from the scheduled arrival, so a slow server cannot slow the clock that measures it). Per rate: SLO attainment
(share of requests answered 200 within the SLO), goodput (those per second), p50/p99 and the mean sparsity served.
A contender's rates stop after the first one where it keeps under half its requests within the SLO.

Infinity lives in its own venv (it pins transformers < 5): `--infinity_venv` (default /work/venvs/infinity),
made with `python3 -m venv V && V/bin/pip install torch==2.13.0 'infinity-emb[server,torch,optimum]'`; without it
the Infinity contenders are skipped and the reason recorded.

    python bench/goodput.py --out bench/results/cpu/goodput [--quick] [--model CKPT] [--slo_ms 50]

summary.goodput_ratio_vs_peer: the highest rate at which dynsparse with budgets keeps >= 99% within the SLO, and
every rate below it too, over the same for the best Infinity engine (SuperServe's anchor: 2.85x SLO attainment; the
goal is >= 3); None when no peer keeps 99% even at the lowest rate. At ~100-300 requests per rate one slow
request moves a rate's share by 0.3-1%, so two looser ratios come with it: `highest_rate_ratio_vs_peer` (the
highest rate that keeps 99%, whatever the rates below it did) and `peak_goodput_ratio_vs_peer` (the most requests
within the SLO per second at any rate; a contender's sweep stops after its first rate under half within the SLO,
so a peer that fails early is measured at low rates only).

    python bench/goodput.py --out bench/results/cpu/goodput --resummarise   # the summary of a saved run, again
"""

import asyncio
import gc
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from common import base_parser, device_name, plt, real_sentences, write_result  # noqa: E402
from serve_load import _free_port, _pct, start_server, wait_ready  # noqa: E402

ATTAINED = 0.99  # a rate is sustained when this share of its requests meets the SLO
GIVE_UP = 0.5  # past a rate where under this share meets it, higher rates only queue more


def embedding_checkpoint(spec: str | None, work: Path) -> str:
    """`spec` (a dynsparse checkpoint), or the embedded MiniLM wrapped as a feature-extraction checkpoint."""
    if spec:
        return spec
    import dynsparse
    from dynsparse.assets.default import default_model_path

    path = work / "minilm-ckpt"
    dynsparse.from_pretrained(default_model_path(), task="feature-extraction").save(str(path))
    return str(path)


def onnx_model_dir(venv: Path, model: str, cache: Path) -> Path:
    """The model with `onnx/model.onnx` beside it, exported once by optimum (in Infinity's venv) and cached."""
    out = cache / "minilm-onnx"
    if (out / "model.onnx").is_file():
        return out
    tmp = cache / "minilm-onnx.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    # --library transformers: the sentence-transformers export names its outputs differently from what
    # Infinity's optimum engine reads (`last_hidden_state`)
    cmd = [
        str(venv / "bin" / "optimum-cli"),
        "export",
        "onnx",
        "--model",
        model,
        "--task",
        "feature-extraction",
        "--library",
        "transformers",
        str(tmp),
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_offline())
    for extra in ("modules.json", "sentence_bert_config.json", "1_Pooling"):  # its pooling config, as upstream
        src = Path(model) / extra
        if src.is_dir():
            shutil.copytree(src, tmp / extra, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copy(src, tmp / extra)
    tmp.replace(out)
    return out


def _offline() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "DO_NOT_TRACK": "1",
        "PYTHONPATH": "",
    }


@contextmanager
def infinity(venv: Path, engine: str, model_dir: Path) -> Iterator[str]:
    """`infinity_emb v2` serving `model_dir` with `engine`; yields its URL once /health answers."""
    port = _free_port()
    # the model as "." from inside its folder: Infinity 0.0.78 hands optimum the ONNX file's path joined to the
    # model path, which optimum-onnx 0.1.0 then looks for *inside* the model folder (an absolute path never matches)
    cmd = [
        str(venv / "bin" / "infinity_emb"),
        "v2",
        "--model-id",
        ".",
        "--served-model-name",
        "minilm",
        "--engine",
        engine,
        "--device",
        "cpu",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, cwd=model_dir, env=_offline(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, "/health", f"infinity ({engine})")
        yield url
    finally:
        _stop(proc)


@contextmanager
def dynsparse_server(ckpt: str, env: dict[str, str] | None = None) -> Iterator[str]:
    proc, url = start_server(ckpt, "cpu", 32, env)  # waits for /readyz 200 (the server binds before it loads)
    try:
        yield url
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL: an Infinity whose startup failed was seen ignoring SIGTERM for good."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


async def _one(
    session: aiohttp.ClientSession, path: str, body: dict[str, Any], at: float, slo_s: float, out: list[dict[str, Any]]
) -> None:
    await asyncio.sleep(max(0.0, at - time.perf_counter()))
    status, data = 0, dict[str, Any]()
    try:
        async with session.post(path, json=body) as r:
            status = r.status
            data = await r.json() if r.status == 200 else {}
    except (aiohttp.ClientError, asyncio.TimeoutError):
        pass
    ms = (time.perf_counter() - at) * 1000  # from the scheduled arrival: queueing in the client counts too
    met = status == 200 and ms <= slo_s * 1000
    out.append(
        {
            "ok": status == 200,
            "ms": ms,
            "met": met,
            "sparsity": data.get("sparsity"),
            "server_ms": data.get("latency_ms"),
        }
    )


def run_rate(
    url: str, path: str, bodies: list[dict[str, Any]], rate: float, seconds: float, slo_ms: float
) -> dict[str, Any]:
    """Poisson arrivals at `rate` per second for `seconds`; one row of results."""
    rng = random.Random(int(rate * 1000))
    gaps = [rng.expovariate(rate) for _ in range(int(rate * seconds * 2) + 10)]
    results: list[dict[str, Any]] = []

    async def main() -> None:
        conn = aiohttp.TCPConnector(limit=0)  # open loop: as many connections as requests in flight
        async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=30), connector=conn) as s:
            async with s.get("/health" if path == "/embeddings" else "/healthz") as r:
                await r.read()
            gc.collect()
            gc.freeze()  # no collector pause of the load generator counted as the server's latency
            t0, at, tasks = time.perf_counter() + 0.05, 0.0, []
            for i, gap in enumerate(gaps):
                at += gap
                if at > seconds:
                    break
                tasks.append(
                    asyncio.ensure_future(_one(s, path, bodies[i % len(bodies)], t0 + at, slo_ms / 1000, results))
                )
            await asyncio.gather(*tasks)

    asyncio.run(main())
    ms = sorted(r["ms"] for r in results if r["ok"])
    met = sum(r["met"] for r in results)
    served = [r["sparsity"] for r in results if r["sparsity"] is not None]
    row = {
        "rate": rate,
        "requests": len(results),
        "errors": sum(not r["ok"] for r in results),
        "slo_attainment": round(met / max(len(results), 1), 4),
        "goodput_rps": round(met / seconds, 2),
        "p50_ms": _pct(ms, 50),
        "p99_ms": _pct(ms, 99),
        "mean_sparsity": round(statistics.mean(served), 3) if served else None,
        # dynsparse's answers say the server's own time: the rest is the network's and the client's
        "outside_p99_ms": _pct(sorted(r["ms"] - r["server_ms"] for r in results if r["server_ms"] is not None), 99),
    }
    print(row, flush=True)
    return row


def sweep(
    url: str, path: str, bodies: list[dict[str, Any]], rates: list[float], seconds: float, slo_ms: float
) -> list[dict[str, Any]]:
    run_rate(url, path, bodies[:20], rates[0], 2.0, slo_ms)  # warm-up, not recorded
    rows = []
    for rate in rates:
        rows.append(run_rate(url, path, bodies, rate, seconds, slo_ms))
        if rows[-1]["slo_attainment"] < GIVE_UP:
            break
    return rows


def sustained(rows: list[dict[str, Any]]) -> float:
    """The highest rate with >= 99% within the SLO, below the first rate that fails it (0: none)."""
    best = 0.0
    for r in rows:
        if r["slo_attainment"] < ATTAINED:
            break
        best = r["rate"]
    return best


def highest(rows: list[dict[str, Any]]) -> float:
    """The highest rate with >= 99% within the SLO, whatever the rates below it did (0: none)."""
    return max((r["rate"] for r in rows if r["slo_attainment"] >= ATTAINED), default=0.0)


def _ratio(ours: float, peers: dict[str, float]) -> float | None:
    """Ours over the best peer's; None when no peer ran or the best is 0 (it kept 99% at no rate)."""
    best = max(peers.values(), default=0.0)
    return round(ours / best, 2) if best else None


def summarise(rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The ratios of dynsparse with budgets to the best Infinity engine, three ways (see the module docstring)."""
    ours = "dynsparse latency_budget_ms=SLO"
    strict = {name: sustained(rs) for name, rs in rows.items()}
    loose = {name: highest(rs) for name, rs in rows.items()}
    peak = {name: max((r["goodput_rps"] for r in rs), default=0.0) for name, rs in rows.items()}

    def peers(d: dict[str, float]) -> dict[str, float]:
        return {n: v for n, v in d.items() if n.startswith("infinity")}

    return {
        "goodput_ratio_vs_peer": _ratio(strict[ours], peers(strict)),
        "sustained_rate_at_99": strict,
        "highest_rate_ratio_vs_peer": _ratio(loose[ours], peers(loose)),
        "highest_rate_at_99": loose,
        "peak_goodput_ratio_vs_peer": _ratio(peak[ours], peers(peak)),
        "peak_goodput_rps": peak,
        # the peer each ratio divides by can differ: name both
        "best_peer": max(peers(peak), key=peak.__getitem__) if peers(peak) else None,  # by peak goodput
        "best_peer_sustained": max(peers(strict), key=strict.__getitem__) if peers(strict) else None,
    }


def _bodies(texts: list[str], kind: str, slo_ms: float) -> list[dict[str, Any]]:
    if kind == "infinity":
        return [{"model": "minilm", "input": [t]} for t in texts]
    size = {"latency_budget_ms": slo_ms} if kind == "budget" else {"sparsity": 0.0}
    return [{"inputs": [t], **size} for t in texts]


def run_contenders(
    args: Any, ckpt: str, rates: list[float], seconds: float
) -> tuple[dict[str, list], dict[str, str], float]:
    texts = real_sentences(500)
    rows: dict[str, list[dict[str, Any]]] = {}
    skipped: dict[str, str] = {}
    with dynsparse_server(ckpt) as url:
        rows["dynsparse dense"] = sweep(
            url, "/v1/embed", _bodies(texts, "dense", args.slo_ms), rates, seconds, args.slo_ms
        )
    # as an operator would: what clients wait beyond the server's own time, measured at the lowest rate, is the
    # budget's share spent outside the server (`budget_overhead_ms`)
    overhead = args.budget_overhead_ms
    if overhead is None:
        overhead = rows["dynsparse dense"][0]["outside_p99_ms"] or 0.0
    with dynsparse_server(ckpt, {"DYNSPARSE_BUDGET_OVERHEAD_MS": str(overhead)}) as url:
        rows["dynsparse latency_budget_ms=SLO"] = sweep(
            url, "/v1/embed", _bodies(texts, "budget", args.slo_ms), rates, seconds, args.slo_ms
        )
    venv = Path(args.infinity_venv)
    if not (venv / "bin" / "infinity_emb").is_file():
        skipped["infinity"] = f"no infinity_emb in {venv} (see this script's docstring to make the venv)"
        return rows, skipped, overhead
    from dynsparse.assets.default import default_model_path

    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    for engine in ("torch", "optimum"):
        name = f"infinity {engine}"
        try:
            model_dir = (
                Path(default_model_path()) if engine == "torch" else onnx_model_dir(venv, default_model_path(), cache)
            )
            with infinity(venv, engine, model_dir) as url:
                rows[name] = sweep(
                    url, "/embeddings", _bodies(texts, "infinity", args.slo_ms), rates, seconds, args.slo_ms
                )
        except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
            skipped[name] = f"{type(e).__name__}: {e}"
            print(f"skipped {name}: {skipped[name]}", flush=True)
    return rows, skipped, overhead


def infinity_version(venv: Path) -> str | None:
    py = venv / "bin" / "python"
    if not py.is_file():
        return None
    cmd = [str(py), "-c", "import importlib.metadata as m; print(m.version('infinity_emb'))"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_offline())
    return done.stdout.strip() or None


def plot(rows: dict[str, list[dict[str, Any]]], slo_ms: float, out: Path, title: str) -> None:
    pyplot = plt()
    fig, (a1, a2, a3) = pyplot.subplots(1, 3, figsize=(14, 4), dpi=120)
    for name, rs in rows.items():
        x = [r["rate"] for r in rs]
        a1.plot(x, [r["slo_attainment"] for r in rs], "o-", label=name)
        a2.plot(x, [r["goodput_rps"] for r in rs], "o-", label=name)
        a3.plot(x, [r["p99_ms"] or float("nan") for r in rs], "o-", label=name)
    a1.axhline(ATTAINED, color="grey", lw=0.8)
    a1.set_ylabel(f"share within {slo_ms:g} ms")
    a2.plot(
        [0, max(r["rate"] for rs in rows.values() for r in rs)],
        [0, max(r["rate"] for rs in rows.values() for r in rs)],
        "k:",
        lw=0.8,
    )
    a2.set_ylabel("goodput (requests within SLO / s)")
    a3.axhline(slo_ms, color="grey", lw=0.8)
    a3.set_ylabel("client p99 (ms)")
    a3.set_yscale("log")
    for ax in (a1, a2, a3):
        ax.set_xlabel("offered rate (requests / s, Poisson)")
        ax.grid(alpha=0.3)
    a1.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "goodput.png")


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--slo_ms", type=float, default=50.0)
    p.add_argument("--infinity_venv", default="/work/venvs/infinity")
    p.add_argument(
        "--budget_overhead_ms",
        type=float,
        default=None,
        help="the budget server's budget_overhead_ms (default: p99 of client - server time, dense, lowest rate)",
    )
    p.add_argument(
        "--cache_dir",
        default=str(Path.home() / ".cache" / "dynsparse" / "bench"),
        help="where the ONNX export for Infinity's optimum engine is kept",
    )
    p.add_argument("--resummarise", action="store_true", help="recompute the summary of OUT/goodput.json, run nothing")
    args = p.parse_args()
    if args.resummarise:
        doc = json.loads((Path(args.out) / "goodput.json").read_text())
        doc["summary"] = {**doc["summary"], **summarise(doc["rows"])}
        write_result(Path(args.out), "goodput", doc)
        return
    if args.device != "cpu":
        raise SystemExit("bench/goodput.py runs its servers on the CPU: use --device cpu")
    # from 5 req/s: the sustained rate needs a grid that starts below where each contender fails (12-07: Infinity
    # optimum kept 0.96 at 10 req/s on a slow run, so "0 sustained" said nothing about it)
    rates = [10.0, 30.0, 60.0] if args.quick else [5.0, 10.0, 20.0, 40.0, 60.0, 90.0, 130.0, 180.0, 250.0]
    seconds = 8.0 if args.quick else 15.0
    device = device_name("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        rows, skipped, overhead = run_contenders(args, embedding_checkpoint(args.model, Path(tmp)), rates, seconds)
    summary = {
        **summarise(rows),
        "slo_ms": args.slo_ms,
        "skipped": skipped,
        "budget_overhead_ms": overhead,
        "device": device,
        "infinity_emb": infinity_version(Path(args.infinity_venv)),
    }
    out = Path(args.out)
    write_result(
        out,
        "goodput",
        {"summary": summary, "rows": rows, "rates": rates, "seconds_per_rate": seconds, "quick": args.quick},
    )
    plot(rows, args.slo_ms, out, f"all-MiniLM-L6-v2, one sentence per request, SLO {args.slo_ms:g} ms ({device})")


if __name__ == "__main__":
    main()
