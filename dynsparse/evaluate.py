"""Every level from one checkpoint: metrics, parameters, FLOPs and measured latency per sparsity."""

import json
import logging
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dynsparse.cost import level_costs
from dynsparse.modeling import ElasticModel
from dynsparse.profile import measure_latency
from dynsparse.tasks import Task

log = logging.getLogger(__name__)

LATENCY_BATCH, LATENCY_SEQ_LEN = 8, 128  # the level table's latency column: batch 8 x 128 tokens


def default_levels(max_sparsity: float, step: float = 0.1) -> list[float]:
    """0.0, 0.1, ... up to the trained maximum (inclusive)."""
    n = int(max_sparsity / step + 1e-6)
    levels = [round(i * step, 4) for i in range(n + 1)]
    return levels if abs(levels[-1] - max_sparsity) < 1e-6 else [*levels, round(max_sparsity, 4)]


def make_loader(ds: Dataset, tokenizer: Any, batch_size: int, shuffle: bool = False) -> DataLoader[Any]:
    from transformers import DataCollatorWithPadding

    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=DataCollatorWithPadding(tokenizer))


@torch.inference_mode()
def predict_levels(
    model: ElasticModel, loader: DataLoader[Any], levels: list[float], progress: bool = True
) -> tuple[dict[float, torch.Tensor], torch.Tensor]:
    """Logits of every level over the whole loader (one pass over the data): ({s: (N, C)}, labels (N,))."""
    device = next(model.parameters()).device
    logits: dict[float, list[torch.Tensor]] = {s: [] for s in levels}
    labels = []
    for batch in tqdm(loader, desc=f"evaluating {len(levels)} levels", disable=not progress, unit="batch"):
        batch = {k: v.to(device) for k, v in batch.items()}
        labels.append(batch.pop("labels").cpu())
        for s in levels:
            logits[s].append(model(**batch, sparsity=s).logits.float().cpu())
    return {s: torch.cat(v) for s, v in logits.items()}, torch.cat(labels)


def evaluate_levels(
    model: ElasticModel, task: Task, loader: DataLoader[Any] | None, levels: list[float], latency_batch: int = 8,
    latency_seq_len: int = 128, progress: bool = True,
) -> list[dict[str, Any]]:  # fmt: skip
    """The level table: one row per sparsity with costs, task metrics (when data is given) and latency."""
    model.eval()
    metrics: dict[float, dict[str, float]] = {}
    if loader is not None:
        logits, labels = predict_levels(model, loader, levels, progress)
        metrics = {s: task.metrics(logits[s], labels) for s in levels}
    rows = []
    for s in tqdm(levels, desc="measuring latency", disable=not progress, unit="level"):
        structure = model.structure(s)
        row: dict[str, Any] = {"sparsity": s, **level_costs(model.shape, structure, latency_seq_len)}
        row.update({k: round(v, 4) for k, v in metrics.get(s, {}).items()})
        row["latency_ms"] = round(measure_latency(model, s, latency_batch, latency_seq_len), 3)
        row["heads"] = sum(h for h, _ in structure)
        row["neurons"] = sum(n for _, n in structure)
        rows.append(row)
    dense = rows[0]["latency_ms"]
    for row in rows:
        row["speedup"] = round(dense / row["latency_ms"], 3)
    return rows


def format_table(rows: list[dict[str, Any]], metric: str | None) -> str:
    cols = ["sparsity", *([metric] if metric else []), "f1", "params", "params_encoder", "flops", "latency_ms",
            "speedup"]  # fmt: skip
    cols = [c for c in cols if c in rows[0]]
    fmt = {"params": "{:,}", "params_encoder": "{:,}", "flops": "{:.3g}"}
    lines = ["  ".join(f"{c:>14}" for c in cols)]
    for r in rows:
        lines.append("  ".join(f"{fmt.get(c, '{}').format(r[c]):>14}" for c in cols))
    return "\n".join(lines)


def plot_levels(rows: list[dict[str, Any]], metric: str | None, path: Path, title: str) -> None:
    """Metric (left axis) and measured latency (right axis) against sparsity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = [r["sparsity"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if metric and metric in rows[0]:
        ax.plot(s, [r[metric] for r in rows], "o-", color="tab:blue", label=metric)
        ax.set_ylabel(metric, color="tab:blue")
    ax.set_xlabel("sparsity (fraction of prunable encoder parameters removed)")
    lat = ax.twinx()
    lat.plot(s, [r["latency_ms"] for r in rows], "s--", color="tab:red", label="latency")
    lat.set_ylabel("latency (ms)", color="tab:red")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_levels(rows: list[dict[str, Any]], out_dir: Path, metric: str | None, info: dict[str, Any]) -> None:
    """levels.json ({"levels": rows, ...info}), levels.png, and the table on stdout."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "levels.json").write_text(json.dumps({"levels": rows, **info}, indent=2))
    device = info.get("device", "")
    title = f"{info.get('model', 'dynsparse')} — latency at batch {info.get('latency_batch')} x " \
            f"{info.get('latency_seq_len')} tokens on {device}"  # fmt: skip
    plot_levels(rows, metric, out_dir / "levels.png", title)
    print(format_table(rows, metric), flush=True)
    log.info("wrote %s and %s", out_dir / "levels.json", out_dir / "levels.png")
