"""Once-for-all training: every step trains several sizes of one set of weights.

Phase 1 (importance, the first `importance_ratio` of steps, Taylor or learned gates): plain dense fine-tuning
while the scorer accumulates |m * dL/dm| per head and neuron (or trains the gates m). Then the model is rewired (units
permuted into importance order, Adam moments with them), which fixes the nested ordering.
Phase 2 (sandwich): each step runs the densest size on the labels and the smallest plus random sizes
on a mix of labels and the dense forward's soft predictions (in-place distillation) or a fixed
teacher's; sub-sizes run as real prefix slices, so they cost less than the dense forward.

Distributed (torchrun): every rank trains the same sizes on its shard of the global batch through
DistributedDataParallel, which all-reduces gradients once per optimizer step; the Taylor gates' gradients are
averaged by hand (they are not parameters), so every rank rewires identically. Rank 0 logs and saves.

This module is the step loop; the importance phase's scorers and rewiring are `dynsparse.importance_phase`, the
training states (save, resume, log truncation) `dynsparse.train_state`.
"""

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from tqdm.auto import tqdm

from dynsparse.config import SparsityArguments, TrainArguments
from dynsparse.data import LANGUAGE
from dynsparse.distributed import World, average_, gather_objects, resolve_device, shard, wrap_model
from dynsparse.errors import InputError
from dynsparse.evaluate import predict_levels
from dynsparse.importance import magnitude_scores
from dynsparse.importance_phase import ImportancePhase, fix_depth_rule, ordering_languages
from dynsparse.metadata import Ordering
from dynsparse.modeling import ElasticModel
from dynsparse.sandwich import Batch, SizeStep
from dynsparse.schedule import batch_indices, sample_depths, sample_sizes, total_steps
from dynsparse.tasks import Task
from dynsparse.train_state import TrainerState, load_state, resolve_resume, rng_state, save_state, truncate_log

log = logging.getLogger(__name__)


class Trainer:
    """The step loop; `train()` only calls `_step`, `_evaluate` and `_save`.

    `world` is this process's place in a torchrun launch (default: a single process). The training forwards
    run through `self.wrapped` (DistributedDataParallel when distributed); `self.model` stays the plain
    `ElasticModel` with the same parameters, for sizes, evaluation and saving.
    """

    def __init__(
        self,
        model: ElasticModel,
        task: Task,
        train_ds: Dataset,
        eval_ds: Dataset | None,
        args: TrainArguments,
        sparsity: SparsityArguments,
        teacher: ElasticModel | None = None,
        world: World | None = None,
    ) -> None:
        self.model, self.task, self.train_ds, self.eval_ds = model, task, train_ds, eval_ds
        self.args, self.sp, self.teacher = args, sparsity, teacher
        self.world = world or World()
        self.out_dir = Path(args.output_dir)
        self.device = resolve_device(args.device, self.world)
        self.model.to(self.device)
        self.wrapped = wrap_model(self.model, self.world, self.device, skips_layers=sparsity.min_depth > 0)
        self.global_batch = args.per_device_train_batch_size * self.world.size
        if self.teacher is not None:
            self.teacher.to(self.device).eval()
        self.collate = task.collator(model.tokenizer)
        steps = total_steps(
            args.max_steps, args.num_train_epochs, len(train_ds), self.global_batch, args.gradient_accumulation_steps
        )
        self.optimizer = make_optimizer(model, args)
        from transformers import get_linear_schedule_with_warmup

        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, round(args.warmup_ratio * steps), steps)
        self.one_shot = sparsity.mode == "one-shot"
        self.fine_tune = sparsity.mode == "fine-tune"  # dense only; the ordering is fixed at the end
        self.gated = sparsity.importance in ("taylor", "learned")  # estimated from gates in dense forwards
        self.total, importance_steps = run_length(steps, sparsity)
        self.state = TrainerState(importance_steps=importance_steps)
        self.amp_dtype = autocast_dtype(args.mixed_precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)
        self.log_path = self.out_dir / "train_log.jsonl"
        layers = model.shape.layers
        if sparsity.min_depth >= layers:
            raise InputError(f"--min_depth {sparsity.min_depth} must be below the model's {layers} layers")
        self.languages = ordering_languages(train_ds, sparsity, self.world)
        self.importance = ImportancePhase(model, sparsity, self.world, self.device, self.languages)
        accum = args.gradient_accumulation_steps
        self.sizes = SizeStep(
            model, task, sparsity, self.importance, self.scaler, self.amp_dtype, self.device, accum, teacher
        )

    # -- the loop ------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Train to the last step (resuming first when asked); returns a summary of the run."""
        if self.args.resume_from_checkpoint:
            self._resume(resolve_resume(self.args.resume_from_checkpoint, self.out_dir))
        elif self.sp.importance == "magnitude" and not self.state.rewired and not self.fine_tune:
            self._rewire(*magnitude_scores(self.model))
        self.model.meta = replace(self.model.meta, ordering=Ordering(self.sp.importance, self.sp.mode))
        fix_depth_rule(self.model, self.sp)
        start, t0, main = self.state.step, time.time(), self.world.is_main
        bar = tqdm(total=self.total, initial=start, desc="training", unit="step", dynamic_ncols=True, disable=not main)
        with bar, open(self.log_path, "a") if main else nullcontext() as log_file:
            while self.state.step < self.total:
                if self._importance_done():
                    self._rewire(*self.importance.scorer.scores())
                record = self._step()
                self.state.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", phase=record["phase"])
                if main:  # the other ranks go on to the next step and wait for rank 0 in its all-reduce
                    self._report(record, log_file)
                if self._due(self.args.save_steps):
                    self._save()
        if not self.state.rewired and self.gated:  # fewer steps than the importance phase (or one-shot)
            self._rewire(*self.importance.scorer.scores())
        elif self.fine_tune and self.sp.importance == "magnitude":  # the fine-tuned weights' magnitudes
            self._rewire(*magnitude_scores(self.model))
        elapsed = time.time() - t0
        return {
            "steps": self.total,
            "resumed_at": start,
            "seconds": round(elapsed, 1),
            "steps_per_second": round((self.total - start) / max(elapsed, 1e-9), 3),
            "importance_steps": self.state.importance_steps,
        }

    def close(self) -> None:
        """Drop the DistributedDataParallel wrapper; call it before the process group is destroyed.

        The wrapper's reducer holds the group. Released last from the reducer's destructor, the group joins
        gloo's worker threads while holding the GIL they may need, which can hang the process at exit.
        """
        self.wrapped = self.model

    def _report(self, record: dict[str, Any], log_file: Any) -> None:
        """Evaluate when due and append the step's record to train_log.jsonl (rank 0 only)."""
        if self._due(self.args.eval_steps):
            record.update(self._evaluate())
            log.info("step %d: %s", self.state.step, {k: v for k, v in record.items() if "eval" in k})
        if self._due(self.args.logging_steps) or any(k.startswith("eval_") for k in record):
            log_file.write(json.dumps({"step": self.state.step, **record}) + "\n")
            log_file.flush()

    def _due(self, every: int) -> bool:
        return every > 0 and self.state.step % every == 0

    def _importance_done(self) -> bool:
        return self.gated and not self.state.rewired and self.state.step >= self.state.importance_steps

    def _rewire(self, head_scores: torch.Tensor, neuron_scores: torch.Tensor) -> None:
        self.importance.rewire(head_scores, neuron_scores, self.optimizer)
        self.state.rewired = True
        log.info("step %d: ordering fixed (%s importance); units rewired", self.state.step, self.sp.importance)

    # -- one optimizer step --------------------------------------------------------------------------
    def _step(self) -> dict[str, Any]:
        """One optimizer step over `gradient_accumulation_steps` micro-batches."""
        self.wrapped.train()
        dense_phase = self.gated and not self.state.rewired
        whole = dense_phase or self.fine_tune  # the whole model: the gates cover every unit
        sizes, depths = step_sizes(self.state.step, self.args.seed, self.sp, self.model.shape.layers, whole)
        losses = dict.fromkeys(sizes, 0.0)
        accum = self.args.gradient_accumulation_steps
        for micro in range(accum):
            batch = self._batch(self.state.step * accum + micro)
            for s, loss in self.sizes.run(
                self.wrapped, batch, sizes, depths, dense_phase, last=micro == accum - 1
            ).items():
                losses[s] += loss / accum
        losses = _average_losses(self.world, self.device, losses)
        if self.one_shot:  # the weights stay as given: only the importance estimate moves
            self.optimizer.zero_grad(set_to_none=True)
            return {"phase": "one-shot", "loss": sum(losses.values())}
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        phase = "fine-tune" if self.fine_tune else "importance" if dense_phase else "sandwich"
        return {
            "phase": phase,
            "loss": sum(losses.values()),
            "loss_by_size": {f"{s:.3f}": round(v, 5) for s, v in losses.items()},
            "grad_norm": round(float(grad_norm), 4),
            "lr": self.scheduler.get_last_lr()[0],
        }

    def _batch(self, micro_step: int) -> Batch:
        # every rank draws the same global batch and keeps its own slice of it
        idx = shard(batch_indices(micro_step, self.args.seed, len(self.train_ds), self.global_batch), self.world)
        return collate_batch([self.train_ds[int(i)] for i in idx], self.collate, self.device, bool(self.languages))

    # -- evaluation and state ------------------------------------------------------------------------
    def _evaluate(self) -> dict[str, float]:
        """Validation metric of the densest and the smallest size (the full table is computed at the end)."""
        if self.eval_ds is None:
            return {}
        ends = (self.sp.min_sparsity, self.sp.max_sparsity)
        return evaluate_ends(self.model, self.task, self.eval_ds, ends, self.args.per_device_eval_batch_size)

    def _save(self) -> None:
        """Rank 0 writes the state; every rank's RNG goes with it, so each resumes its own generators."""
        rng = gather_objects(self.world, rng_state())
        if not self.world.is_main:
            return
        path = save_state(
            self.out_dir,
            self.model,
            self.optimizer,
            self.scheduler,
            self.state,
            self.importance.tensors(),
            self.args.save_total_limit,
            rng,
        )
        log.info("saved training state %s", path)

    def _resume(self, path: Path) -> None:
        self.state, scores = load_state(path, self.model, self.optimizer, self.scheduler, self.world.rank)
        self.importance.load(scores, path)
        if self.world.is_main:
            truncate_log(self.log_path, self.state.step)
        log.info("resumed from %s at step %d", path, self.state.step)


def collate_batch(rows: list[dict[str, Any]], collate: Any, device: torch.device, languages: bool) -> Batch:
    """`rows` as one batch on `device`, with each row's language when orderings are per language."""
    features = collate(rows)
    labels = features.pop("labels").to(device)
    langs = [str(r[LANGUAGE]) for r in rows] if languages else None
    return Batch(inputs={k: v.to(device) for k, v in features.items()}, labels=labels, languages=langs)


def step_sizes(
    step: int, seed: int, sparsity: SparsityArguments, layers: int, whole: bool
) -> tuple[list[float], list[int | None]]:
    """The sparsities and depths one step trains: the sandwich's samples, or only the whole model."""
    if whole:
        return [0.0], [None]
    sizes = sample_sizes(step, seed, sparsity.min_sparsity, sparsity.max_sparsity, sparsity.sizes_per_step)
    return sizes, sample_depths(step, seed, sparsity.min_depth, layers, len(sizes))


def run_length(steps: int, sparsity: SparsityArguments) -> tuple[int, int]:
    """(steps to run, of which the importance phase) out of the `steps` the data and flags ask for."""
    gated = sparsity.importance in ("taylor", "learned")
    whole_run = sparsity.mode in ("one-shot", "fine-tune")  # fine-tune: dense only; the ordering is fixed at the end
    if sparsity.mode == "one-shot" and not gated:
        return 0, 0  # magnitude or natural order: nothing to run
    return steps, (steps if whole_run else round(sparsity.importance_ratio * steps)) if gated else 0


def autocast_dtype(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype the forwards autocast to; None on CPU, where autocast is not used here and training is fp32."""
    if device.type != "cuda":
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)


def evaluate_ends(
    model: ElasticModel, task: Task, eval_ds: Dataset, ends: tuple[float, float], batch_size: int
) -> dict[str, float]:
    """The main metric of the densest and the smallest trained size, as logged during training."""
    preds = predict_levels(model, task, eval_ds, list(ends), batch_size, progress=False)
    m = task.main_metric
    return {
        f"eval_dense_{m}": task.metrics(preds[ends[0]], eval_ds)[m],
        f"eval_smallest_{m}": task.metrics(preds[ends[1]], eval_ds)[m],
    }


def make_optimizer(model: ElasticModel, args: TrainArguments) -> torch.optim.Optimizer:
    """AdamW with weight decay on the matrices only (not on biases and norms), as transformers' Trainer."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.learning_rate)


def _average_losses(world: World, device: torch.device, losses: dict[float, float]) -> dict[float, float]:
    """Mean over ranks, so the log shows the global batch's losses, as a single process would."""
    if not world.distributed:
        return losses
    values = torch.tensor(list(losses.values()), device=device)
    average_(world, values)
    return dict(zip(losses, values.tolist(), strict=True))
