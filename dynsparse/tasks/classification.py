"""text-classification: one label per text or text pair (GLUE-style), accuracy and F1."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dynsparse.config import DataArguments
from dynsparse.data import detect_columns, encode, label_names
from dynsparse.errors import InputError
from dynsparse.heads import ClassifierHead
from dynsparse.tasks.base import Collator, Columns, distill_loss, gather_rows, pad_collator
from dynsparse.tasks.spec import TaskSpec

if TYPE_CHECKING:
    from datasets import Dataset


class SequenceClassification:
    name = "text-classification"
    main_metric = "accuracy"

    def __init__(self, labels: list[str]) -> None:
        if len(labels) < 2:
            raise InputError(f"classification needs at least 2 labels, the data has {len(labels)}")
        self.labels = list(labels)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @classmethod
    def columns(cls, ds: Dataset, args: DataArguments) -> Columns:
        return detect_columns(ds, args)

    @classmethod
    def label_names(cls, ds: Dataset, cols: Columns) -> list[str]:
        assert cols.label is not None
        return label_names(ds, cols.label)

    def encode(self, ds: Dataset, tokenizer: Any, cols: Columns, max_len: int, what: str, train: bool) -> Dataset:
        return encode(ds, tokenizer, cols, self.labels, max_len, what)

    def collator(self, tokenizer: Any) -> Collator:
        return pad_collator(tokenizer)

    def loss(self, out: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(out.float(), labels)

    def distill(self, student: Tensor, teacher: Tensor, labels: Tensor, temperature: float) -> Tensor:
        return distill_loss(student, teacher, temperature)

    def gather(self, out: Tensor, labels: Tensor | None) -> list[Any]:
        return gather_rows(out)

    def metrics(self, preds: list[Any], ds: Dataset) -> dict[str, float]:
        return self.score(torch.stack(preds), torch.tensor(ds["labels"]))

    def score(self, logits: Tensor, labels: Tensor) -> dict[str, float]:
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


SPEC = TaskSpec(
    name=SequenceClassification.name,
    task=SequenceClassification,
    auto_class="AutoModelForSequenceClassification",
    head=lambda shape, family, dropout: ClassifierHead(shape, family.pool_act, dropout),
    head_weights=lambda family: [("head.pool", family.pool), ("head.classifier", family.classifier)],
    endpoint="classify",
    warm_up=("warm", "up"),
)
