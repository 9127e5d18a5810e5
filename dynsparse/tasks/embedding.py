"""feature-extraction: sentence embeddings (mean-pooled) for retrieval and bitext mining.

Training data are pairs (`sentence1`, `sentence2`: a translation, a paraphrase, a query and its passage).
The loss is in-batch contrastive (InfoNCE with the other pairs of the batch as negatives, scale 20, as
sentence-transformers' MultipleNegativesRankingLoss); a smaller size distils the dense size's similarity
rows. The metric is BUCC/Tatoeba-style accuracy@1: for each `sentence1`, is its own `sentence2` the
nearest of all `sentence2`s by cosine (and the other way round; the two directions are averaged)?
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dynsparse.config import DataArguments
from dynsparse.data import LANGUAGE, Columns
from dynsparse.errors import InputError
from dynsparse.heads import MeanPoolHead
from dynsparse.tasks.base import Collator, distill_loss, map_or_fail, pick_column
from dynsparse.tasks.spec import TaskSpec

if TYPE_CHECKING:
    from datasets import Dataset

SCALE = 20.0  # inverse temperature of the cosine similarities (sentence-transformers' default)
_FIRST = ("sentence1", "query", "anchor", "text1", "source")
_SECOND = ("sentence2", "passage", "positive", "text2", "target")


class SentenceEmbedding:
    name = "feature-extraction"
    main_metric = "accuracy_at_1"

    def __init__(self, labels: list[str] | None = None) -> None:
        self.labels: list[str] = []

    @classmethod
    def label_names(cls, ds: Dataset, cols: Columns) -> list[str]:
        return []

    @classmethod
    def columns(cls, ds: Dataset, args: DataArguments) -> Columns:
        names = ds.column_names
        first = pick_column(names, args.text_column, _FIRST, "first sentence", "--text_column")
        second = pick_column(names, args.text_pair_column, _SECOND, "second sentence", "--text_pair_column")
        return Columns(text=first, pair=second, label=None)

    def encode(self, ds: Dataset, tokenizer: Any, cols: Columns, max_len: int, what: str, train: bool) -> Dataset:
        a_col, b_col = cols.text, cols.pair
        assert b_col is not None

        def _encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
            a = tokenizer([str(t) for t in batch[a_col]], truncation=True, max_length=max_len)["input_ids"]
            b = tokenizer([str(t) for t in batch[b_col]], truncation=True, max_length=max_len)["input_ids"]
            return {"input_ids": a, "pair_ids": b}

        ds = ds.filter(
            lambda rows: [
                isinstance(x, str) and isinstance(y, str) and x.strip() and y.strip()
                for x, y in zip(rows[a_col], rows[b_col], strict=True)
            ],
            batched=True,
        )
        if len(ds) < 2:
            raise InputError(f"{what}: sentence embeddings need at least 2 non-empty pairs, found {len(ds)}")
        remove = [c for c in ds.column_names if c != LANGUAGE]
        return map_or_fail(ds, _encode, remove, what)

    def collator(self, tokenizer: Any) -> Collator:
        """Both sides of B pairs in one padded batch of 2B rows (first sides, then second sides); labels are
        each first side's partner among the second sides."""

        def collate(rows: list[dict[str, Any]]) -> dict[str, Tensor]:
            sides = [{"input_ids": r["input_ids"]} for r in rows] + [{"input_ids": r["pair_ids"]} for r in rows]
            batch = dict(tokenizer.pad(sides, return_tensors="pt"))
            batch["labels"] = torch.arange(len(rows))
            return batch

        return collate

    def loss(self, out: Tensor, labels: Tensor) -> Tensor:
        sim = similarities(out)
        return (F.cross_entropy(sim, labels) + F.cross_entropy(sim.T, labels)) / 2

    def distill(self, student: Tensor, teacher: Tensor, labels: Tensor, temperature: float) -> Tensor:
        """Match the dense size's in-batch similarity rows (both directions)."""
        s, t = similarities(student), similarities(teacher)
        return (distill_loss(s, t, temperature) + distill_loss(s.T, t.T, temperature)) / 2

    def gather(self, out: Tensor, labels: Tensor | None) -> list[Any]:
        e = F.normalize(out.float(), dim=-1).cpu()
        half = e.shape[0] // 2
        return [(e[i], e[half + i]) for i in range(half)]

    def metrics(self, preds: list[Any], ds: Dataset) -> dict[str, float]:
        a = torch.stack([p[0] for p in preds])
        b = torch.stack([p[1] for p in preds])
        sim = a @ b.T  # (N, N) cosine
        target = torch.arange(len(preds))
        forward = float((sim.argmax(1) == target).float().mean())
        backward = float((sim.argmax(0) == target).float().mean())
        return {
            "accuracy_at_1": (forward + backward) / 2,
            "accuracy_at_1_forward": forward,
            "accuracy_at_1_backward": backward,
        }


def similarities(out: Tensor) -> Tensor:
    """Scaled cosine similarities (B, B) of the first sides (rows) with the second sides (columns)."""
    e = F.normalize(out.float(), dim=-1)
    half = e.shape[0] // 2
    return SCALE * e[:half] @ e[half:].T


SPEC = TaskSpec(
    name=SentenceEmbedding.name,
    task=SentenceEmbedding,
    auto_class="AutoModel",
    head=lambda shape, family, dropout: MeanPoolHead(),
    head_weights=lambda family: [],  # mean pooling has no weights
    endpoint="embed",
    warm_up="warm up",
)
