"""One micro-batch of once-for-all training: forward and backward every size the step drew (the densest on
the labels, the others on labels and the dense forward's or a teacher's soft predictions), each language's
rows on its own ordering once those are fixed. `dynsparse.trainer` owns the loop around it."""

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from dynsparse.config import SparsityArguments
from dynsparse.data import group_rows
from dynsparse.distributed import sync_gradients
from dynsparse.importance_phase import Gates, ImportancePhase
from dynsparse.modeling import ElasticModel
from dynsparse.tasks import Task


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    languages: list[str] | None = None  # per row, when orderings are per language


@dataclass
class SizeStep:
    """What forwarding and backwarding the sizes needs; `run` is one micro-batch (returns each size's loss)."""

    model: ElasticModel
    task: Task
    sparsity: SparsityArguments
    importance: ImportancePhase
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    device: torch.device
    accum: int  # micro-batches per optimizer step (losses are scaled by 1 / accum)
    teacher: ElasticModel | None = None

    def run(
        self,
        wrapped: torch.nn.Module,
        batch: Batch,
        sizes: list[float],
        depths: list[int | None],
        dense_phase: bool,
        last: bool,
    ) -> dict[float, float]:
        """Forward and backward every size (sparsity and depth) on one micro-batch; returns each size's loss.

        Gradients are all-reduced across ranks only in the very last backward of the step (`last` micro-batch,
        last size); the backwards before it accumulate locally.
        """
        scale = 1.0 / self.accum
        gates = self.importance.gates(len(batch.labels)) if dense_phase else Gates()
        with sync_gradients(wrapped, last and len(sizes) == 1):
            with self.autocast():
                out = wrapped(
                    **batch.inputs,
                    sparsity=sizes[0],
                    head_mask=gates.head,
                    neuron_mask=gates.neuron,
                    layer_mask=gates.layer,
                )
                loss = self.task.loss(out.logits, batch.labels)
            self.scaler.scale(loss * scale).backward()
        if dense_phase:  # fp16: the gates' gradients carry the loss scale, and overflow on some steps
            loss_scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
            self.importance.update(gates, batch.languages, loss_scale)
        losses = {sizes[0]: loss.item()}
        soft = self._teacher_logits(batch, out.logits)
        return losses | self._sub_sizes(wrapped, batch, soft, sizes, depths, last)

    def _sub_sizes(
        self,
        wrapped: torch.nn.Module,
        batch: Batch,
        soft: torch.Tensor,
        sizes: list[float],
        depths: list[int | None],
        last: bool,
    ) -> dict[float, float]:
        """Forward and backward the sizes after the densest on a mix of labels and `soft` targets, each language's
        rows on its own ordering once those are fixed; returns each size's loss."""
        scale = 1.0 / self.accum
        a, t = self.sparsity.distill_alpha, self.sparsity.distill_temperature
        groups = language_groups(self.model, batch, self.device)
        losses: dict[float, float] = {}
        for i, (s, d) in enumerate(zip(sizes[1:], depths[1:], strict=True), start=2):
            losses[s] = 0.0
            for k, (lang, rows, weight) in enumerate(groups):
                inputs = batch.inputs if rows is None else {key: v[rows] for key, v in batch.inputs.items()}
                labels, target = (batch.labels, soft) if rows is None else (batch.labels[rows], soft[rows])
                with sync_gradients(wrapped, last and i == len(sizes) and k == len(groups) - 1):
                    with self.autocast():
                        logits = wrapped(**inputs, sparsity=s, depth=d, language=lang).logits
                        distill = self.task.distill(logits, target, labels, t)
                        sub = weight * (a * distill + (1 - a) * self.task.loss(logits, labels))
                    if rows is not None and not torch.isfinite(sub):  # a language's rows with no labelled token
                        continue
                    self.scaler.scale(sub * scale).backward()
                losses[s] += sub.item()
        return losses

    def _teacher_logits(self, batch: Batch, dense_logits: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            return dense_logits.detach().float()  # in-place distillation from this step's dense forward
        with torch.no_grad(), self.autocast():
            logits: torch.Tensor = self.teacher(**batch.inputs).logits
            return logits.float()

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def language_groups(
    model: ElasticModel, batch: Batch, device: torch.device
) -> list[tuple[str | None, torch.Tensor | None, float]]:
    """(language, its rows, its share of the batch) for the sub-sizes: each language runs its own ordering once
    they are fixed; one group of everything under the shared ordering."""
    if not model.languages or batch.languages is None:
        return [(None, None, 1.0)]
    n, groups = len(batch.languages), group_rows(batch.languages)
    return [
        (lang, torch.tensor(groups[lang], device=device), len(groups[lang]) / n)
        for lang in model.languages
        if lang in groups
    ]
