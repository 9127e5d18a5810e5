"""Shadow agreement under load: the real server on 127.0.0.1 with shadowing off and on, mixed sizes from real
clients; client-side latency percentiles side by side, and the agreement curve it measured against the offline one.

Requests are real review snippets (Rotten Tomatoes, the embedded default's corpus), one each, at sparsity 0, 0.3,
0.6 or 0.9 drawn at random. Three servers: "off" (`shadow_fraction` 0), "default" (0.02, the setting's default)
and "on" (1.0: every request served below dense is shadowed, the worst case). Runs alternate (off, default, on,
off, ... at each client count) so a loaded machine disturbs all alike, and each starts once the shadowing servers'
idle lanes have drained (their re-runs would otherwise run during the next measurement). Afterwards the offline
twin (`dynsparse.twin.agreement_levels`) prices the same texts at the same sizes: the shadow figures should match.

    python bench/shadow_load.py --model runs/default --out bench/results/shadow_load [--quick]

Without --model, the embedded MiniLM wrapped as a classifier (natural ordering, an untrained head): its labels
mean nothing, but what each size costs against dense is measured all the same.

summary.p50_ratio_on_off_C / p99_ratio_on_off_C: client p50 / p99 at C clients with shadowing on (1.0) over off
(medians of the runs); p50_ratio_default_off_C / p99_ratio_default_off_C the same for the default fraction.
summary.shadow_compared: shadow re-runs compared; summary.agreement: per size, the shadow agreement and its samples,
the offline twin's agreement on the same texts, and the checkpoint's offline metric (relative to dense).
"""

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import base_parser, device_name, plt, real_sentences, write_result  # noqa: E402
from serve_load import run_load, start_server  # noqa: E402


def _checkpoint(spec: str | None, tmp: Path) -> str:
    if spec:
        return spec
    import dynsparse
    from dynsparse.assets.default import default_model_path

    dynsparse.from_pretrained(default_model_path(), labels=["negative", "positive"]).save(str(tmp / "minilm"))
    return str(tmp / "minilm")


def _serve(ckpt: str, device: str, fraction: float) -> tuple[Any, str]:
    os.environ["DYNSPARSE_SHADOW_FRACTION"] = str(fraction)  # start_server passes the environment on
    return start_server(ckpt, device, 32)


def _sizes(url: str) -> dict[str, Any]:
    return httpx.get(url + "/v1/sizes", timeout=30).json()


def main() -> None:
    args = base_parser(__doc__.splitlines()[0]).parse_args()
    device = device_name(args.device)
    total, seconds, rounds = (150, 20.0, 2) if args.quick else (400, 30.0, 3)
    clients = [1, 8] if args.quick else [1, 8, 32]
    texts = real_sentences(300, seed=1)
    modes = {"off": 0.0, "default": 0.02, "on": 1.0}
    rows: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = _checkpoint(args.model, Path(tmp))
        servers = {mode: _serve(ckpt, args.device, f) for mode, f in modes.items()}
        try:
            for c in clients:
                for _ in range(rounds):  # alternate: load on the machine hits both modes alike
                    for mode in modes:
                        _drain(servers["on"][1])
                        _drain(servers["default"][1])
                        rows[mode].append({**run_load(servers[mode][1], c, total, seconds, texts=texts), "mode": mode})
            _drain(servers["on"][1])
            sizes = _sizes(servers["on"][1])
            compared = _metric(servers["on"][1], 'dynsparse_shadow_jobs_total{outcome="compared"}')
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(30)
        twin = _twin(ckpt, texts, [0.3, 0.6, 0.9])
    summary = _summary(rows, clients, sizes, compared, twin)
    out = Path(args.out)
    write_result(out, "shadow_load", {"device": device, "rows": rows, "summary": summary, "levels": sizes["levels"]})
    _plot(rows, clients, sizes, twin, out / "shadow_load.png")
    print(summary)


def _drain(url: str, quiet_s: float = 1.0, limit_s: float = 60.0) -> None:
    """Wait until the shadowing server's re-runs stop (its idle lane is empty): counted jobs unchanged for
    `quiet_s`, at most `limit_s`."""
    last, since, deadline = -1.0, time.monotonic(), time.monotonic() + limit_s
    while time.monotonic() < deadline:
        seen = _metric(url, "dynsparse_shadow_jobs_total{")  # every outcome
        if seen != last:
            last, since = seen, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.2)


def _twin(ckpt: str, texts: list[str], levels: list[float]) -> dict[float, float]:
    """The offline twin on the same texts: each level's agreement with dense (the checkpoint task's measure)."""
    import dynsparse
    from dynsparse.twin import agreement_levels

    rows = agreement_levels(dynsparse.load(ckpt).eval(), texts, levels, max_len=128)
    return {s: rows[s]["agreement"] for s in levels}


def _metric(url: str, line_start: str) -> float:
    """The sum of the server's samples whose line starts with `line_start` (0 when none)."""
    lines = httpx.get(url + "/metrics", timeout=30).text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(line_start))


def _summary(
    rows: dict[str, list[dict[str, Any]]],
    clients: list[int],
    sizes: dict[str, Any],
    compared: float,
    twin: dict[float, float],
) -> dict[str, Any]:
    out: dict[str, Any] = {"shadow_compared": compared, "agreement_measure": sizes.get("agreement_measure")}
    for c in clients:
        for q in ("p50_ms", "p99_ms"):
            off = statistics.median(r[q] for r in rows["off"] if r["clients"] == c and r[q] is not None)
            for mode in ("on", "default"):
                on = statistics.median(r[q] for r in rows[mode] if r["clients"] == c and r[q] is not None)
                out[f"{q.removesuffix('_ms')}_ratio_{mode}_off_{c}"] = round(on / off, 3)
    key = f"shadow_{sizes.get('agreement_measure')}"
    out["agreement"] = {
        str(lv["sparsity"]): {
            "shadow": lv.get(key),
            "samples": lv.get("shadow_samples"),
            "twin_same_texts": twin.get(lv["sparsity"]),
            "offline": lv.get("agreement_offline"),
            sizes.get("metric") or "metric": lv.get(sizes.get("metric") or ""),
        }
        for lv in sizes["levels"]
    }
    return out


def _plot(
    rows: dict[str, list[dict[str, Any]]],
    clients: list[int],
    sizes: dict[str, Any],
    twin: dict[float, float],
    path: Path,
) -> None:
    pyplot = plt()
    fig, (ax, bx) = pyplot.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    width = 0.28
    for k, mode in enumerate(("off", "default", "on")):
        for j, q in enumerate(("p50_ms", "p99_ms")):
            vals = [statistics.median(r[q] for r in rows[mode] if r["clients"] == c) for c in clients]
            xs = [i * 2 + j + (k - 1) * width for i in range(len(clients))]
            ax.bar(
                xs,
                vals,
                width,
                label=f"{q[:3]} shadow {mode}",
                alpha=(0.35, 0.65, 1.0)[k],
                color="tab:blue" if j == 0 else "tab:red",
            )
    ax.set_xticks([i * 2 + 0.5 for i in range(len(clients))], [f"{c} clients" for c in clients])
    ax.set_ylabel("client latency (ms)")
    ax.legend(fontsize=7)
    key = f"shadow_{sizes.get('agreement_measure')}"
    levels = sizes["levels"]
    shadow = [lv for lv in levels if isinstance(lv.get(key), float | int)]
    bx.plot(
        [lv["sparsity"] for lv in shadow],
        [lv[key] for lv in shadow],
        "o-",
        color="tab:green",
        label=f"agreement with dense ({sizes.get('agreement_measure')}, shadow)",
    )
    bx.plot(list(twin), list(twin.values()), "^:", color="tab:orange", label="offline twin, same texts")
    offline = [lv for lv in levels if lv.get("agreement_offline") is not None]
    bx.plot(
        [lv["sparsity"] for lv in offline],
        [lv["agreement_offline"] for lv in offline],
        "s--",
        color="tab:blue",
        label=f"offline {sizes.get('metric')} relative to dense",
    )
    bx.set_xlabel("sparsity")
    bx.legend(fontsize=7)
    bx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
