"""The training recipe behind `train.py` / `dynsparse train`: setup, train, evaluate every level, save.

Everything that can fail on user input (model path, architecture, data files, columns, labels) is
checked before the output directory is touched, so a bad run leaves nothing behind.

Under torchrun every process runs this recipe: each trains on its shard of every batch (see
`dynsparse.distributed`), and rank 0 alone writes the output folder, the logs and the checkpoint.
"""

import logging
import os
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from dynsparse import metadata
from dynsparse.config import DataArguments, ModelArguments, SparsityArguments, TrainArguments
from dynsparse.data import Columns, load_split
from dynsparse.distributed import World, main_first, process_group, resolve_device
from dynsparse.errors import InputError
from dynsparse.evaluate import LATENCY_BATCH, LATENCY_SEQ_LEN, depth_grid, evaluate_levels, write_levels
from dynsparse.level_table import level_info
from dynsparse.levels import trained_levels
from dynsparse.modeling import ElasticModel
from dynsparse.pretrained import from_pretrained, load_hf_config
from dynsparse.tasks import Task, task_class
from dynsparse.trainer import Trainer
from dynsparse.writer import META, save_checkpoint

log = logging.getLogger(__name__)


@dataclass
class Setup:
    model: ElasticModel
    task: Task
    train_ds: Any
    eval_ds: Any
    teacher: ElasticModel | None
    columns: Columns


def cache_dir() -> Path:
    return Path(os.environ.get("DYNSPARSE_CACHE", Path.home() / ".cache" / "dynsparse"))


def resolve_defaults(m: ModelArguments, d: DataArguments) -> tuple[ModelArguments, DataArguments]:
    """Fill in the embedded default model and data where none are given."""
    from dataclasses import replace

    from dynsparse.assets.default import default_model_path, prepare_rotten_tomatoes

    if m.model_name_or_path is None:
        m = replace(m, model_name_or_path=default_model_path())
    if d.train_file is None:
        if d.validation_file is not None:
            raise InputError("--validation_file given without --train_file")
        train, valid = prepare_rotten_tomatoes(cache_dir() / "rotten_tomatoes")
        d = replace(d, train_file=train, validation_file=valid)
    return m, d


def setup(m: ModelArguments, d: DataArguments, sp: SparsityArguments) -> Setup:
    """Load and check model, data and teacher; nothing is written yet."""
    assert m.model_name_or_path is not None and d.train_file is not None  # resolve_defaults ran
    kind = task_class(d.task)  # an unknown --task fails before anything is read
    load_hf_config(m.model_name_or_path)  # a bad path or architecture fails before the data is read
    train_raw = load_split(d.train_file, "training data")
    eval_raw = load_split(d.validation_file, "validation data") if d.validation_file else None
    if d.max_train_samples:
        train_raw = train_raw.select(range(min(d.max_train_samples, len(train_raw))))
    if eval_raw is not None and d.max_eval_samples:
        eval_raw = eval_raw.select(range(min(d.max_eval_samples, len(eval_raw))))
    cols = kind.columns(train_raw, d)
    if eval_raw is not None:
        kind.columns(eval_raw, d)
    task = kind(kind.label_names(train_raw, cols))
    model = from_pretrained(m.model_name_or_path, labels=task.labels, allocation=sp.allocation, task=d.task)
    model.meta = replace(
        model.meta,
        task=d.task,
        labels=tuple(task.labels),
        main_metric=task.main_metric,
        columns=metadata.Columns(cols.text, cols.pair, cols.label),
    )
    max_len = min(d.max_seq_length, model.shape.max_positions - 2)
    train_ds = task.encode(train_raw, model.tokenizer, cols, max_len, "training data", train=True)
    eval_ds = task.encode(eval_raw, model.tokenizer, cols, max_len, "validation data", False) if eval_raw else None
    teacher = None
    if m.teacher_name_or_path:
        teacher = from_pretrained(m.teacher_name_or_path, tokenizer=False, task=d.task)
        if len(teacher.meta.labels or ()) != len(task.labels):
            raise InputError(f"teacher has {len(teacher.meta.labels or ())} labels, the data has {len(task.labels)}")
    return Setup(model, task, train_ds, eval_ds, teacher, cols)


def prepare_output_dir(t: TrainArguments, write: bool = True) -> Path:
    """Check the output folder, then (when `write`: rank 0 only) create it and start a fresh metrics log."""
    out = Path(t.output_dir)
    if (out / META).exists() and not (t.overwrite_output_dir or t.resume_from_checkpoint):
        raise InputError(f"{out} already holds a checkpoint: pass --overwrite_output_dir or --resume_from_checkpoint")
    if out.exists() and not out.is_dir():
        raise InputError(f"--output_dir {out} exists and is not a directory")
    if not write:  # the other ranks fail on the same checks, but never touch the folder
        return out
    out.mkdir(parents=True, exist_ok=True)
    if not t.resume_from_checkpoint:  # a fresh run starts a fresh metrics log
        (out / "train_log.jsonl").unlink(missing_ok=True)
    return out


def run_training(
    m: ModelArguments, d: DataArguments, sp: SparsityArguments, t: TrainArguments, world: World | None = None
) -> Path:
    """Train once, evaluate every level, write the checkpoint at the top of `output_dir`.

    `world` places this process in a torchrun launch (`distributed.world_from_env`; default: one process).
    Rank 0 evaluates the levels after the process group is closed, so the other ranks exit when training
    ends and a long evaluation cannot time out their collectives.
    """
    with ExitStack() as logs:  # the run's train.log handler is removed when the run ends
        return _run_training(m, d, sp, t, world or World(), logs)


def _run_training(
    m: ModelArguments, d: DataArguments, sp: SparsityArguments, t: TrainArguments, world: World, logs: ExitStack
) -> Path:
    with process_group(world, resolve_device(t.device, world)):
        with main_first(world):  # rank 0 fills the download and dataset caches, the others read them
            m, d = resolve_defaults(m, d)
            torch.manual_seed(t.seed)
            s = setup(m, d, sp)
        out = prepare_output_dir(t, write=world.is_main)
        if world.is_main:
            from dynsparse.cli_logging import file_log

            logs.enter_context(file_log(out / "train.log"))
        log.info(
            "training %s on %s (%d examples, labels %s, %d processes)",
            m.model_name_or_path,
            d.train_file,
            len(s.train_ds),
            list(s.model.meta.labels or ()),
            world.size,
        )
        trainer = Trainer(s.model, s.task, s.train_ds, s.eval_ds, t, sp, s.teacher, world)
        try:
            summary = {**trainer.train(), "world_size": world.size}
        finally:
            trainer.close()  # before the process group goes (see Trainer.close)
    if not world.is_main:
        return out
    model = trainer.model
    levels = trained_levels(sp.min_sparsity, sp.max_sparsity, t.eval_levels)
    rows = evaluate_levels(
        model,
        s.task,
        s.eval_ds,
        levels,
        LATENCY_BATCH,
        LATENCY_SEQ_LEN,
        batch_size=t.per_device_eval_batch_size,
        depths=depth_grid(model),
    )
    info = level_info(model, m.model_name_or_path or "", trainer.device, LATENCY_BATCH, LATENCY_SEQ_LEN)
    full = [r for r in rows if r["depth"] == model.shape.layers]  # the served size table is the width axis
    model.meta = replace(
        model.meta,
        sparsity_range=(sp.min_sparsity, sp.max_sparsity),
        levels=tuple(full),
        level_info=info,
        training={**summary, "args": {**asdict(m), **asdict(d), **asdict(sp), **asdict(t)}},
    )
    save_checkpoint(model, out)
    write_levels(rows, out, s.task.main_metric if s.eval_ds is not None else None, info)
    log.info("checkpoint written to %s", out)
    return out
