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
"""

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from tqdm.auto import tqdm

from dynsparse.config import SparsityArguments, TrainArguments
from dynsparse.data import LANGUAGE, group_rows
from dynsparse.distributed import World, average_, gather_objects, resolve_device, shard, sync_gradients, wrap_model
from dynsparse.errors import InputError
from dynsparse.evaluate import predict_levels
from dynsparse.importance import LanguageScorer, LearnedScorer, Scorer, TaylorScorer, magnitude_scores
from dynsparse.modeling import ElasticModel, every_other
from dynsparse.rewire import rewire
from dynsparse.schedule import batch_indices, sample_depths, sample_sizes, total_steps
from dynsparse.tasks import Task
from dynsparse.train_state import TrainerState, load_state, resolve_resume, rng_state, save_state

log = logging.getLogger(__name__)


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    languages: list[str] | None = None  # per row, when orderings are per language


class Trainer:
    """Holds the training state; `train()` only calls `_step`, `_evaluate` and `_save`.

    `world` is this process's place in a torchrun launch (default: a single process). The training forwards
    run through `self.wrapped` (DistributedDataParallel when distributed); `self.model` stays the plain
    `ElasticModel` with the same parameters, for sizes, evaluation and saving.
    """

    def __init__(
        self, model: ElasticModel, task: Task, train_ds: Dataset, eval_ds: Dataset | None, args: TrainArguments,
        sparsity: SparsityArguments, teacher: ElasticModel | None = None, world: World | None = None,
    ) -> None:  # fmt: skip
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
        self.total = total_steps(args.max_steps, args.num_train_epochs, len(train_ds), self.global_batch,
                                 args.gradient_accumulation_steps)  # fmt: skip
        self.optimizer = self._make_optimizer()
        from transformers import get_linear_schedule_with_warmup

        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, round(args.warmup_ratio * self.total),
                                                         self.total)  # fmt: skip
        self.one_shot = sparsity.mode == "one-shot"
        self.fine_tune = sparsity.mode == "fine-tune"  # dense only; the ordering is fixed at the end
        self.gated = sparsity.importance in ("taylor", "learned")  # estimated from gates in dense forwards
        if self.one_shot and not self.gated:
            self.total = 0  # magnitude or natural order: nothing to run
        whole_run = self.one_shot or self.fine_tune
        imp_steps = self.total if whole_run else round(sparsity.importance_ratio * self.total)
        self.state = TrainerState(importance_steps=imp_steps if self.gated else 0)
        s = model.shape
        scorer = LearnedScorer if sparsity.importance == "learned" else TaylorScorer
        self.scorer: Scorer = scorer(s.layers, s.heads, s.intermediate, self.device)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)
        if self.device.type != "cuda":
            self.amp_dtype = None  # autocast is a GPU feature here; CPU trains in fp32
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)
        self.log_path = self.out_dir / "train_log.jsonl"
        layers = model.shape.layers
        if sparsity.min_depth >= layers:
            raise InputError(f"--min_depth {sparsity.min_depth} must be below the model's {layers} layers")
        self.min_depth = sparsity.min_depth
        self.languages = self._orderings_languages()
        self.lang_scorer = (
            LanguageScorer(self.languages, layers, s.heads, s.intermediate, self.device) if self.languages else None
        )
        self.layer_scores = torch.zeros(layers, device=self.device)  # accumulated |g * dL/dg| of layer gates
        self.layer_steps = 0

    def _orderings_languages(self) -> list[str]:
        """The training data's languages when each gets its own ordering (non-shared); none for shared."""
        if self.sp.orderings == "shared":
            return []
        if LANGUAGE not in self.train_ds.column_names:
            raise InputError("--orderings per-language needs a language column (or one training file per language)")
        if self.world.distributed:
            raise InputError("--orderings per-language trains in one process (not under torchrun) for now")
        values = self.train_ds[LANGUAGE]
        langs = sorted({str(x) for x in values})
        if len(langs) < 2:
            raise InputError(f"--orderings per-language needs at least two languages in the data, found {langs}")
        bad = [x for x in values if not isinstance(x, str) or not 0 < len(x) <= 64]
        if bad or len(langs) > 256:
            raise InputError(f"--orderings per-language: languages must be 1-64 character names, at most 256 of "
                             f"them; found {len(langs)}, e.g. {(bad or langs)[0]!r:.80}")  # fmt: skip
        return langs

    def _make_optimizer(self) -> torch.optim.Optimizer:
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for name, p in self.model.named_parameters():
            (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.args.learning_rate)

    # -- the loop ------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Train to the last step (resuming first when asked); returns a summary of the run."""
        if self.args.resume_from_checkpoint:
            self._resume(resolve_resume(self.args.resume_from_checkpoint, self.out_dir))
        elif self.sp.importance == "magnitude" and not self.state.rewired and not self.fine_tune:
            self._rewire(*magnitude_scores(self.model))
        self.model.meta["ordering"] = {"estimator": self.sp.importance, "mode": self.sp.mode}
        self._fix_depth_rule()
        start, t0, main = self.state.step, time.time(), self.world.is_main
        bar = tqdm(total=self.total, initial=start, desc="training", unit="step", dynamic_ncols=True, disable=not main)
        with bar, open(self.log_path, "a") if main else nullcontext() as log_file:
            while self.state.step < self.total:
                if self._importance_done():
                    self._rewire(*self.scorer.scores())
                record = self._step()
                self.state.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", phase=record["phase"])
                if main:  # the other ranks go on to the next step and wait for rank 0 in its all-reduce
                    self._report(record, log_file)
                if self._due(self.args.save_steps):
                    self._save()
        if not self.state.rewired and self.gated:  # fewer steps than the importance phase (or one-shot)
            self._rewire(*self.scorer.scores())
        elif self.fine_tune and self.sp.importance == "magnitude":  # the fine-tuned weights' magnitudes
            self._rewire(*magnitude_scores(self.model))
        elapsed = time.time() - t0
        return {"steps": self.total, "resumed_at": start, "seconds": round(elapsed, 1),
                "steps_per_second": round((self.total - start) / max(elapsed, 1e-9), 3),
                "importance_steps": self.state.importance_steps}  # fmt: skip

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
        if self.gated:
            self.scorer.fold(self.model)  # learned gates become part of the weights (Taylor's are ones)
        if self.lang_scorer is not None:  # as the units stand now; `rewire` moves them with their units
            self.model.set_language_scores(self.languages, *self.lang_scorer.scores())
        rewire(self.model, head_scores, neuron_scores, self.optimizer)
        if self.sp.layer_order == "taylor" and self.layer_steps:
            order = torch.sort(self.layer_scores.cpu(), descending=True, stable=True).indices.tolist()
            self.model.set_layer_order(order, "taylor")
        self.state.rewired = True
        log.info("step %d: ordering fixed (%s importance); units rewired", self.state.step, self.sp.importance)

    # -- one optimizer step --------------------------------------------------------------------------
    def _step(self) -> dict[str, Any]:
        """One optimizer step over `gradient_accumulation_steps` micro-batches."""
        self.wrapped.train()
        dense_phase = self.gated and not self.state.rewired
        step, seed = self.state.step, self.args.seed
        depths: list[int | None] = [None]
        if dense_phase or self.fine_tune:
            sizes = [0.0]  # the whole model: the gates cover every unit
        else:
            sizes = sample_sizes(step, seed, self.sp.min_sparsity, self.sp.max_sparsity, self.sp.sizes_per_step)
            depths = sample_depths(step, seed, self.min_depth, self.model.shape.layers, len(sizes))
        losses = dict.fromkeys(sizes, 0.0)
        accum = self.args.gradient_accumulation_steps
        for micro in range(accum):
            batch = self._batch(self.state.step * accum + micro)
            for s, loss in self._micro_step(batch, sizes, depths, dense_phase, last=micro == accum - 1).items():
                losses[s] += loss / accum
        losses = self._average_losses(losses)
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
        return {"phase": phase, "loss": sum(losses.values()),
                "loss_by_size": {f"{s:.3f}": round(v, 5) for s, v in losses.items()},
                "grad_norm": round(float(grad_norm), 4), "lr": self.scheduler.get_last_lr()[0]}  # fmt: skip

    def _micro_step(
        self, batch: Batch, sizes: list[float], depths: list[int | None], dense_phase: bool, last: bool
    ) -> dict[float, float]:
        """Forward and backward every size (sparsity and depth) on one micro-batch; returns each size's loss.

        Gradients are all-reduced across ranks only in the very last backward of the step (`last` micro-batch,
        last size); the backwards before it accumulate locally.
        """
        scale = 1.0 / self.args.gradient_accumulation_steps
        gates: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        if dense_phase:
            gates = self.lang_scorer.gates(len(batch.labels)) if self.lang_scorer else self.scorer.gates()
        layer_gate = None
        if dense_phase and self.sp.layer_order == "taylor":
            layer_gate = torch.ones(self.model.shape.layers, device=self.device, requires_grad=True)
        with sync_gradients(self.wrapped, last and len(sizes) == 1):
            with self._autocast():
                out = self.wrapped(**batch.inputs, sparsity=sizes[0], head_mask=gates[0], neuron_mask=gates[1],
                                   layer_mask=layer_gate)  # fmt: skip
                loss = self.task.loss(out.logits, batch.labels)
            self.scaler.scale(loss * scale).backward()
        if self.scaler.is_enabled():  # fp16: the gates' gradients carry the loss scale, and overflow on some steps
            self._unscale(gates[0], gates[1], layer_gate)
        if dense_phase and self.lang_scorer is not None and batch.languages is not None:
            assert isinstance(self.scorer, TaylorScorer) and gates[0] is not None and gates[1] is not None
            self.scorer.add(*self.lang_scorer.update(gates[0], gates[1], batch.languages))
        elif dense_phase:
            self._update_scorer(*gates)
        if layer_gate is not None:
            self._update_layer_scores(layer_gate)
        losses = {sizes[0]: loss.item()}
        soft = self._teacher_logits(batch, out.logits)
        a, t = self.sp.distill_alpha, self.sp.distill_temperature
        groups = self._language_groups(batch)
        for i, (s, d) in enumerate(zip(sizes[1:], depths[1:], strict=True), start=2):
            losses[s] = 0.0
            for k, (lang, rows, weight) in enumerate(groups):
                inputs = batch.inputs if rows is None else {key: v[rows] for key, v in batch.inputs.items()}
                labels, target = (batch.labels, soft) if rows is None else (batch.labels[rows], soft[rows])
                with sync_gradients(self.wrapped, last and i == len(sizes) and k == len(groups) - 1):
                    with self._autocast():
                        logits = self.wrapped(**inputs, sparsity=s, depth=d, language=lang).logits
                        distill = self.task.distill(logits, target, labels, t)
                        sub = weight * (a * distill + (1 - a) * self.task.loss(logits, labels))
                    if rows is not None and not torch.isfinite(sub):  # a language's rows with no labelled token
                        continue
                    self.scaler.scale(sub * scale).backward()
                losses[s] += sub.item()
        return losses

    def _language_groups(self, batch: Batch) -> list[tuple[str | None, torch.Tensor | None, float]]:
        """(language, its rows, its share of the batch) for the sub-sizes: each language runs its own ordering once
        they are fixed; one group of everything under the shared ordering."""
        if not self.model.languages or batch.languages is None:
            return [(None, None, 1.0)]
        n, groups = len(batch.languages), group_rows(batch.languages)
        return [(lang, torch.tensor(groups[lang], device=self.device), len(groups[lang]) / n)
                for lang in self.model.languages if lang in groups]  # fmt: skip

    def _update_scorer(self, head_gate: torch.Tensor | None, neuron_gate: torch.Tensor | None) -> None:
        """Add the gates' gradients to the Taylor scores, averaged over ranks first: the gates are not parameters,
        so DDP leaves them alone, and every rank needs the global batch's scores to rewire the same way."""
        if head_gate is None or neuron_gate is None or head_gate.grad is None or neuron_gate.grad is None:
            raise RuntimeError("gates have no gradient: the dense forward did not use them")
        average_(self.world, head_gate.grad, neuron_gate.grad)
        self.scorer.update(head_gate, neuron_gate)

    def _unscale(self, *gates: torch.Tensor | None) -> None:
        """Divide the loss scale out of the gates' gradients; an overflow step's become zeros (skipping it instead
        would desynchronise the ranks' all-reduces of the scores)."""
        scale = self.scaler.get_scale()
        for g in gates:
            if g is not None and g.grad is not None:
                g.grad.div_(scale).nan_to_num_(0.0, 0.0, 0.0)

    def _update_layer_scores(self, gate: torch.Tensor) -> None:
        """Taylor importance of whole layers: |dL/dg| of a gate on each layer's residual branch (g = 0 drops it)."""
        if gate.grad is None:
            raise RuntimeError("the layer gate has no gradient: the dense forward did not use it")
        average_(self.world, gate.grad)
        self.layer_scores += gate.grad.detach().abs().float()
        self.layer_steps += 1

    def _fix_depth_rule(self) -> None:
        """Record the elastic depth range and, for a fixed rule, the order layers drop in (taylor's comes at
        rewiring, from the layer gates)."""
        layers, rule = self.model.shape.layers, self.sp.layer_order
        self.model.meta["depth"] = {**(self.model.meta.get("depth") or {}), "min_layers": self.min_depth or layers}
        if rule == "every-other":
            self.model.set_layer_order(every_other(layers), rule)
        elif rule == "top":
            self.model.set_layer_order(list(range(layers)), rule)

    def _average_losses(self, losses: dict[float, float]) -> dict[float, float]:
        """Mean over ranks, so the log shows the global batch's losses, as a single process would."""
        if not self.world.distributed:
            return losses
        values = torch.tensor(list(losses.values()), device=self.device)
        average_(self.world, values)
        return dict(zip(losses, values.tolist(), strict=True))

    def _teacher_logits(self, batch: Batch, dense_logits: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            return dense_logits.detach().float()  # in-place distillation from this step's dense forward
        with torch.no_grad(), self._autocast():
            logits: torch.Tensor = self.teacher(**batch.inputs).logits
            return logits.float()

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _batch(self, micro_step: int) -> Batch:
        # every rank draws the same global batch and keeps its own slice of it
        idx = shard(batch_indices(micro_step, self.args.seed, len(self.train_ds), self.global_batch), self.world)
        rows = [self.train_ds[int(i)] for i in idx]
        features = self.collate(rows)
        labels = features.pop("labels").to(self.device)
        langs = [str(r[LANGUAGE]) for r in rows] if self.languages else None
        return Batch(inputs={k: v.to(self.device) for k, v in features.items()}, labels=labels, languages=langs)

    # -- evaluation and state ------------------------------------------------------------------------
    def _evaluate(self) -> dict[str, float]:
        """Validation metric of the densest and the smallest size (the full table is computed at the end)."""
        if self.eval_ds is None:
            return {}
        levels = [self.sp.min_sparsity, self.sp.max_sparsity]
        preds = predict_levels(self.model, self.task, self.eval_ds, levels, self.args.per_device_eval_batch_size,
                               progress=False)  # fmt: skip
        m = self.task.main_metric
        return {f"eval_dense_{m}": self.task.metrics(preds[levels[0]], self.eval_ds)[m],
                f"eval_smallest_{m}": self.task.metrics(preds[levels[1]], self.eval_ds)[m]}  # fmt: skip

    def _save(self) -> None:
        """Rank 0 writes the state; every rank's RNG goes with it, so each resumes its own generators."""
        rng = gather_objects(self.world, rng_state())
        if not self.world.is_main:
            return
        scores = {"head": self.scorer.head_scores, "neuron": self.scorer.neuron_scores,
                  "steps": torch.tensor([self.scorer.steps]), "layer": self.layer_scores,
                  "layer_steps": torch.tensor([self.layer_steps]),
                  "layer_order": torch.tensor(self.model.layer_order)}  # fmt: skip
        if self.lang_scorer is not None:
            scores.update(lang_head=self.lang_scorer.head_scores, lang_neuron=self.lang_scorer.neuron_scores,
                          lang_steps=self.lang_scorer.steps)  # fmt: skip
        path = save_state(self.out_dir, self.model, self.optimizer, self.scheduler, self.state, scores,
                          self.args.save_total_limit, rng)  # fmt: skip
        log.info("saved training state %s", path)

    def _resume(self, path: Path) -> None:
        self.state, scores = load_state(path, self.model, self.optimizer, self.scheduler, self.world.rank)
        self.scorer.load(scores["head"], scores["neuron"], int(scores["steps"][0]))
        if self.lang_scorer is not None and "lang_head" in scores:
            if scores["lang_head"].shape[0] != len(self.languages):
                raise InputError(f"{path}: its per-language scores are for {scores['lang_head'].shape[0]} languages, "
                                 f"the training data has {len(self.languages)}")  # fmt: skip
            ls = self.lang_scorer
            ls.head_scores, ls.neuron_scores = scores["lang_head"], scores["lang_neuron"]
            ls.steps = scores["lang_steps"]
        if "layer" in scores:  # states written before elastic depth have none
            self.layer_scores, self.layer_steps = scores["layer"].to(self.device), int(scores["layer_steps"][0])
            self.model.set_layer_order(scores["layer_order"].tolist(), self.sp.layer_order)
        if self.world.is_main:
            self._truncate_log(self.state.step)
        log.info("resumed from %s at step %d", path, self.state.step)

    def _truncate_log(self, step: int) -> None:
        """Drop the records of steps after `step` (logged by the run that stopped), so the resumed run's records
        for those steps are the only ones."""
        if not self.log_path.is_file():
            return
        kept = [line.rstrip("\n") + "\n" for line in self.log_path.read_text().splitlines(keepends=True)
                if _logged_step(line) <= step]  # fmt: skip
        tmp = self.log_path.with_suffix(".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(self.log_path)


def _logged_step(line: str) -> float:
    """The step of a train_log.jsonl line; infinity for a line a killed run left half-written (it goes)."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")
