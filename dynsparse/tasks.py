"""Tasks: the loss, the distillation target and the metrics of a head. Sequence classification now;
token classification, extractive QA and embeddings plug in as further `Task`s with their own heads."""

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from dynsparse.errors import InputError


class Task(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def main_metric(self) -> str: ...

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor: ...

    def metrics(self, logits: Tensor, labels: Tensor) -> dict[str, float]: ...


def distill_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """KL(teacher || student) on softened logits, scaled by T^2 so gradients keep their size (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                    reduction="batchmean") * t * t  # fmt: skip


@dataclass(frozen=True)
class SequenceClassification:
    num_labels: int
    name: str = "text-classification"
    main_metric: str = "accuracy"

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), labels)

    def metrics(self, logits: Tensor, labels: Tensor) -> dict[str, float]:
        """accuracy and F1 (binary: of label 1; multi-class: macro), as GLUE reports them."""
        pred = logits.argmax(-1)
        out = {"accuracy": float((pred == labels).float().mean())}
        classes = [1] if self.num_labels == 2 else range(self.num_labels)
        f1s = []
        for c in classes:
            tp = float(((pred == c) & (labels == c)).sum())
            denom = float((pred == c).sum() + (labels == c).sum())
            f1s.append(2 * tp / denom if denom else 0.0)
        out["f1"] = sum(f1s) / len(f1s)
        return out


def make_task(name: str, num_labels: int) -> Task:
    if name == "text-classification":
        if num_labels < 2:
            raise InputError(f"classification needs at least 2 labels, the data has {num_labels}")
        return SequenceClassification(num_labels)
    raise InputError(f"unsupported task {name!r}")


@torch.no_grad()
def predict_proba(logits: Tensor) -> tuple[Tensor, Tensor]:
    """(label ids, probability of each predicted label) for a batch of logits."""
    probs = logits.float().softmax(-1)
    score, label = probs.max(-1)
    return label, score
