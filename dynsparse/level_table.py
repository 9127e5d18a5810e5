"""The evaluate flow: a checkpoint's level table (metrics, costs, latency per size) and what it was measured
on. `dynsparse evaluate` parses its flags and calls `evaluate_checkpoint`; training ends with `level_info`
beside the same `evaluate_levels` and `write_levels`."""

import logging
import platform
from pathlib import Path
from typing import Any

import torch

import dynsparse
from dynsparse.config import DataArguments
from dynsparse.data import load_splits
from dynsparse.errors import InputError
from dynsparse.evaluate import depth_grid, evaluate_levels, write_levels
from dynsparse.levels import trained_levels
from dynsparse.metadata import Columns
from dynsparse.modeling import ElasticModel
from dynsparse.precision import cast_model, pick_dtype
from dynsparse.tasks import make_task
from dynsparse.twin import add_agreement, twin_texts

log = logging.getLogger("dynsparse")


def evaluate_checkpoint(path: str, args: Any, out: Path) -> tuple[list[dict[str, Any]], str, str]:
    """Evaluate every level of one checkpoint into `out`; returns the rows, the main metric and how the
    checkpoint's ordering was made (estimator and mode). `args`: the parsed flags of `dynsparse evaluate`."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, dtype = load_in_dtype(path, device, args.dtype)
    raw = load_splits(args.validation_file, "validation data")
    if args.max_eval_samples:
        raw = raw.select(range(min(args.max_eval_samples, len(raw))))
    cols_meta = model.meta.columns or Columns()
    dargs = DataArguments(
        text_column=args.text_column or cols_meta.text,
        label_column=args.label_column or cols_meta.label,
        text_pair_column=args.text_pair_column or cols_meta.pair,
    )
    task = make_task(model.task, list(model.meta.labels or ()))
    max_len = min(args.max_seq_length, model.shape.max_positions - 2)
    texts, labelled = twin_texts(raw, task, dargs)  # a file without labels: agreement with dense only
    ds = task.encode(raw, model.tokenizer, task.columns(raw, dargs), max_len, "data", train=False) if labelled else None
    lo, hi = model.meta.sparsity_range
    levels = args.levels or trained_levels(lo, hi)
    depths = args.depths or depth_grid(model)
    for d in depths:
        model.check_depth(d)  # a bad depth fails before any work
    rows = evaluate_levels(
        model,
        task,
        ds,
        levels,
        args.latency_batch,
        args.latency_seq_len,
        batch_size=args.batch_size,
        depths=depths,
        per_language=args.ordering == "auto",
    )
    if args.agreement or not labelled:
        add_agreement(rows, model, texts, args.batch_size, max_len)
    metric = task.main_metric if labelled else "agreement"
    info = level_info(model, model.meta.base_model or path, device, args.latency_batch, args.latency_seq_len)
    info = {**info, "dtype": str(dtype).removeprefix("torch."), "checkpoint": path, "data": args.validation_file}
    write_levels(rows, out, metric, info)
    label = f"{model.meta.ordering.estimator}, {model.meta.ordering.mode}"
    return rows, metric, label


def load_in_dtype(path: str, device: str, dtype_name: str) -> tuple[Any, Any]:
    """The checkpoint on `device`, cast once to `dtype_name` (see `dynsparse.precision`); and the dtype."""
    try:
        dtype = pick_dtype(dtype_name, torch.device(device))
    except RuntimeError as e:  # an unparsable device name
        raise InputError(f"device {device!r}: {e}") from None
    model = dynsparse.load(path, device=device)
    log.debug("running in %s on %s", str(dtype).removeprefix("torch."), device)
    return cast_model(model, dtype), dtype


def level_info(model: ElasticModel, name: str, device: torch.device | str, batch: int, seq_len: int) -> dict[str, Any]:
    """What the level table was measured on (stored beside it)."""
    dev = str(device)
    if dev.startswith("cuda") and torch.cuda.is_available():
        dev = torch.cuda.get_device_name(torch.device(dev))
    else:
        dev = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    path = Path(name)
    shown = path.parent.name if path.name in ("model", "") else path.name  # pip assets keep weights in .../model
    return {
        "model": shown or name,
        "device": dev,
        "latency_batch": batch,
        "latency_seq_len": seq_len,
        "allocation": model.allocation,
    }
