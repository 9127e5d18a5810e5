"""Every level from one checkpoint: metrics, parameters, FLOPs and measured latency per sparsity."""

import json
import logging
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dynsparse.data import LANGUAGE, group_rows
from dynsparse.modeling import ElasticModel
from dynsparse.profile import measure_latency
from dynsparse.tasks import Task

log = logging.getLogger(__name__)

LATENCY_BATCH, LATENCY_SEQ_LEN = 8, 128  # the level table's latency column: batch 8 x 128 tokens


def depth_grid(model: ElasticModel) -> list[int]:
    """All layers; for a checkpoint trained with elastic depth, depths from all layers down to its minimum."""
    layers, least = model.shape.layers, model.meta.depth.min_layers if model.meta.depth else None
    if not isinstance(least, int) or not 1 <= least < layers:
        return [layers]
    step = max(1, -(-(layers - least) // 3))  # at most four depths: the table stays readable
    return sorted({*range(layers, least, -step), least}, reverse=True)


def make_loader(ds: Dataset, tokenizer: Any, batch_size: int, task: Task) -> DataLoader[Any]:
    return DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=task.collator(tokenizer))


@torch.inference_mode()
def predict_levels(
    model: ElasticModel,
    task: Task,
    ds: Dataset,
    levels: list[float],
    batch_size: int = 64,
    progress: bool = True,
    depth: int | None = None,
    per_language: bool = True,
) -> dict[float, list[Any]]:
    """Every level's predictions over `ds` in one pass over the data: {s: one `task.gather` entry per row}.

    A checkpoint with per-language orderings runs each row with its language's ordering (`per_language`; rows of
    other languages, or `per_language=False`, use the shared one)."""
    device = next(model.parameters()).device
    preds: dict[float, list[Any]] = {s: [] for s in levels}
    loader = make_loader(ds, model.tokenizer, batch_size, task)
    langs = None
    if per_language and model.languages and LANGUAGE in ds.column_names:
        langs = [str(x) if str(x) in model.languages else None for x in ds[LANGUAGE]]
    start = 0
    for batch in tqdm(loader, desc=f"evaluating {len(levels)} levels", disable=not progress, unit="batch"):
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels", None)
        rows = len(batch["input_ids"])
        mine = langs[start : start + rows] if langs is not None else None
        start += rows
        for s in levels:
            preds[s].extend(task.gather(_logits(model, batch, s, depth, mine), labels))
    return preds


def _logits(
    model: ElasticModel, batch: dict[str, Tensor], sparsity: float, depth: int | None, langs: list[str | None] | None
) -> Tensor:
    """The batch's head outputs; with per-row languages, each language's rows run with its own ordering."""
    if langs is None or not any(langs):
        return model(**batch, sparsity=sparsity, depth=depth, unpad=True).logits
    out: Tensor | None = None
    for lang, idx in group_rows(langs).items():
        rows = torch.tensor(idx, device=batch["input_ids"].device)
        part = model(
            **{k: v[rows] for k, v in batch.items()}, sparsity=sparsity, depth=depth, language=lang, unpad=True
        ).logits
        if out is None:
            out = part.new_empty((len(langs), *part.shape[1:]))
        out[rows] = part
    assert out is not None
    return out


def languages(ds: Dataset) -> dict[str, list[int]]:
    """Row indices per value of the `language` column (none without one, or with a single language)."""
    if LANGUAGE not in ds.column_names:
        return {}
    rows = group_rows([str(lang) for lang in ds[LANGUAGE]])
    return dict(sorted(rows.items())) if len(rows) > 1 else {}


def score_levels(task: Task, preds: dict[float, list[Any]], ds: Dataset) -> dict[float, dict[str, Any]]:
    """Metrics per level over all rows and, when the data has languages, per language and their average."""
    by_lang = languages(ds)
    subsets = {lang: ds.select(idx) for lang, idx in by_lang.items()}
    out: dict[float, dict[str, Any]] = {}
    for s, p in preds.items():
        row: dict[str, Any] = {k: round(v, 4) for k, v in task.metrics(p, ds).items()}
        if by_lang:
            per = {lang: task.metrics([p[i] for i in idx], subsets[lang]) for lang, idx in by_lang.items()}
            row["by_language"] = {lang: {k: round(v, 4) for k, v in m.items()} for lang, m in per.items()}
            row["language_average"] = {
                k: round(sum(m[k] for m in per.values()) / len(per), 4) for k in next(iter(per.values()))
            }
        out[s] = row
    return out


def evaluate_levels(
    model: ElasticModel,
    task: Task,
    ds: Dataset | None,
    levels: list[float],
    latency_batch: int = 8,
    latency_seq_len: int = 128,
    progress: bool = True,
    batch_size: int = 64,
    depths: list[int] | None = None,
    per_language: bool = True,
) -> list[dict[str, Any]]:
    """The level table: one row per sparsity (per depth, deepest first, when `depths` are given) with costs,
    task metrics (when data is given) and latency."""
    model.eval()
    rows = []
    for depth in sorted(depths or [model.shape.layers], reverse=True):
        rows.extend(
            _depth_rows(
                model, task, ds, levels, latency_batch, latency_seq_len, progress, batch_size, depth, per_language
            )
        )
    dense = rows[0]["latency_ms"]
    for row in rows:
        row["speedup"] = round(dense / row["latency_ms"], 3)
    return rows


def _depth_rows(
    model: ElasticModel,
    task: Task,
    ds: Dataset | None,
    levels: list[float],
    latency_batch: int,
    latency_seq_len: int,
    progress: bool,
    batch_size: int,
    depth: int,
    per_language: bool,
) -> list[dict[str, Any]]:
    d = model.check_depth(depth)
    metrics: dict[float, dict[str, Any]] = {}
    if ds is not None:
        preds = predict_levels(model, task, ds, levels, batch_size, progress, d, per_language)
        metrics = score_levels(task, preds, ds)
    rows = []
    for s in tqdm(levels, desc="measuring latency", disable=not progress, unit="level"):
        structure = model.structure(s, d)
        row: dict[str, Any] = {"sparsity": s, "depth": depth, **model.costs(s, latency_seq_len, d)}
        row.update(metrics.get(s, {}))
        row["latency_ms"] = round(measure_latency(model, s, latency_batch, latency_seq_len, depth=d), 3)
        row["heads"] = sum(h for h, _ in structure)
        row["neurons"] = sum(n for _, n in structure)
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]], metric: str | None) -> str:
    cols = [
        "depth",
        "sparsity",
        *([metric] if metric else []),
        "f1",
        "agreement",
        "params",
        "params_encoder",
        "flops",
        "latency_ms",
        "speedup",
    ]
    cols = [c for i, c in enumerate(cols) if c in rows[0] and c not in cols[:i]]
    if len({r.get("depth") for r in rows}) < 2:
        cols = [c for c in cols if c != "depth"]
    fmt = {"params": "{:,}", "params_encoder": "{:,}", "flops": "{:.3g}"}
    lines = ["  ".join(f"{c:>14}" for c in cols)]
    for r in rows:
        lines.append("  ".join(f"{fmt.get(c, '{}').format(r[c]):>14}" for c in cols))
    return "\n".join(lines)


def format_languages(rows: list[dict[str, Any]], metric: str) -> str:
    """Language x sparsity table of `metric`, with the average over languages as the last line."""
    rows = _full_depth(rows)
    langs = list(rows[0]["by_language"])
    lines = [f"{metric + ' by language':>24}" + "".join(f"{r['sparsity']:>8}" for r in rows)]
    for lang in langs:
        lines.append(f"{lang:>24}" + "".join(f"{r['by_language'][lang][metric]:>8.4f}" for r in rows))
    lines.append(f"{'average':>24}" + "".join(f"{r['language_average'][metric]:>8.4f}" for r in rows))
    return "\n".join(lines)


def plot_languages(rows: list[dict[str, Any]], metric: str, path: Path, title: str) -> None:
    """Heat map of `metric`: languages (and their average) by sparsity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _full_depth(rows)
    langs = list(rows[0]["by_language"])
    grid = [[r["by_language"][lang][metric] for r in rows] for lang in langs]
    grid.append([r["language_average"][metric] for r in rows])
    fig, ax = plt.subplots(figsize=(1.2 + 0.62 * len(rows), 1.3 + 0.42 * len(grid)), dpi=120)
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(rows)), [f"{r['sparsity']:g}" for r in rows])
    ax.set_yticks(range(len(grid)), [*langs, "average"])
    for i, line in enumerate(grid):
        for j, v in enumerate(line):
            ax.text(
                j,
                i,
                f"{v:.3f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if v < 0.5 * (max(map(max, grid)) + min(map(min, grid))) else "black",
            )
    ax.set_xlabel("sparsity")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label=metric)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_levels(rows: list[dict[str, Any]], metric: str | None, path: Path, title: str) -> None:
    """Metric (left axis) and measured latency (right axis) against sparsity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    lat = ax.twinx()
    by_depth = _by_depth(rows)
    for k, (depth, part) in enumerate(by_depth.items()):
        s, tag = [r["sparsity"] for r in part], f" ({depth} layers)" if len(by_depth) > 1 else ""
        alpha = 1.0 - 0.6 * k / max(len(by_depth) - 1, 1)  # deeper: darker
        if metric and metric in part[0]:
            ax.plot(s, [r[metric] for r in part], "o-", color="tab:blue", alpha=alpha, label=metric + tag)
        if metric != "agreement" and "agreement" in part[0]:  # the offline twin of the server's shadow agreement
            ax.plot(
                s,
                [r["agreement"] for r in part],
                "^-",
                color="tab:green",
                alpha=alpha,
                label="agreement with dense" + tag,
            )
        lat.plot(s, [r["latency_ms"] for r in part], "s--", color="tab:red", alpha=alpha, label="latency" + tag)
    if metric and metric in rows[0]:
        ax.set_ylabel(metric, color="tab:blue")
    if len(by_depth) > 1 or (metric != "agreement" and "agreement" in rows[0]):
        handles = ax.get_legend_handles_labels()[0] + lat.get_legend_handles_labels()[0]
        ax.legend(handles=handles, fontsize=7, loc="lower left")
    ax.set_xlabel("sparsity (fraction of prunable encoder parameters removed)")
    lat.set_ylabel("latency (ms)", color="tab:red")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _by_depth(rows: list[dict[str, Any]]) -> dict[Any, list[dict[str, Any]]]:
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r.get("depth"), []).append(r)
    return groups


def _full_depth(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the first (deepest) depth: per-language views show the width curve."""
    return next(iter(_by_depth(rows).values()))


def write_levels(rows: list[dict[str, Any]], out_dir: Path, metric: str | None, info: dict[str, Any]) -> None:
    """levels.json ({"levels": rows, ...info}), levels.png, and the table on stdout."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "levels.json").write_text(json.dumps({"levels": rows, **info}, indent=2))
    device = info.get("device", "")
    title = (
        f"{info.get('model', 'dynsparse')} — latency at batch {info.get('latency_batch')} x "
        f"{info.get('latency_seq_len')} tokens on {device}"
    )
    plot_levels(rows, metric, out_dir / "levels.png", title)
    print(format_table(rows, metric), flush=True)
    log.info("wrote %s and %s", out_dir / "levels.json", out_dir / "levels.png")
    if metric and "by_language" in rows[0]:
        plot_languages(rows, metric, out_dir / "languages.png", f"{info.get('model', 'dynsparse')}: {metric}")
        print(format_languages(rows, metric), flush=True)
        log.info("wrote %s", out_dir / "languages.png")


def write_comparison(curves: dict[str, list[dict[str, Any]]], metric: str | None, out_dir: Path) -> None:
    """compare.json and compare.png: the metric of several checkpoints (orderings, modes) against sparsity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    table = {
        name: [{k: r[k] for k in ("sparsity", metric or "", "params_encoder", "latency_ms") if k in r} for r in rows]
        for name, rows in curves.items()
    }
    (out_dir / "compare.json").write_text(json.dumps({"metric": metric, "curves": table}, indent=2))
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, rows in curves.items():
        if metric and metric in rows[0]:
            ax.plot([r["sparsity"] for r in rows], [r[metric] for r in rows], "o-", label=name)
    ax.set_xlabel("sparsity (fraction of prunable encoder parameters removed)")
    ax.set_ylabel(metric or "")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "compare.png")
    plt.close(fig)
    width = max(len(n) for n in curves)
    print(f"{metric} by sparsity:")
    for name, rows in curves.items():
        print(f"  {name:<{width}}  " + "  ".join(f"{r.get(metric or '', float('nan')):.4f}" for r in rows))
    log.info("wrote %s and %s", out_dir / "compare.json", out_dir / "compare.png")
