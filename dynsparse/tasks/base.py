"""The task interface and what every task shares: column choice, batching, distillation."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import torch.nn.functional as F
from torch import Tensor

from dynsparse.config import DataArguments
from dynsparse.data import Columns
from dynsparse.errors import InputError

if TYPE_CHECKING:  # datasets is imported when data is loaded (the service imports the tasks, never datasets)
    from datasets import Dataset

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
Collator = Callable[[list[dict[str, Any]]], dict[str, Tensor]]


def distill_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """KL(teacher || student) on softened logits over the last dim, averaged over rows, scaled by T^2 so
    gradients keep their size (Hinton et al.)."""
    t = temperature
    s, p = student.reshape(-1, student.shape[-1]), teacher.reshape(-1, teacher.shape[-1])
    return (
        F.kl_div(
            F.log_softmax(s.float() / t, -1), F.log_softmax(p.float() / t, -1), log_target=True, reduction="batchmean"
        )
        * t
        * t
    )


def pick_column(names: list[str], given: str | None, candidates: tuple[str, ...], what: str, flag: str) -> str:
    """`given` if present, else the first usual name found; one clear error otherwise."""
    if given is not None:
        if given not in names:
            raise InputError(f"{what} column {given!r} not found; columns are {names}")
        return given
    found = next((c for c in candidates if c in names), None)
    if found is None:
        raise InputError(f"no {what} column found (looked for {', '.join(candidates)}); pass {flag}, columns: {names}")
    return found


class Task(Protocol):
    """A task over fixed label names (one class per task module, registered by its `TaskSpec`).

    Data flows: `columns` and `label_names` read the raw training data; `encode` tokenises (keeping what the
    metrics need beside the model inputs, e.g. a `language` column); `collator` pads a batch; the trainer
    calls `loss` and `distill` on the head's outputs; evaluation collects `gather` per row and scores
    them with `metrics` (over any subset of rows, e.g. one language). The helpers below are the usual
    implementations (`pad_collator`, `distill_loss`, `gather_rows`).
    """

    name: str  # transformers' pipeline task name
    labels: list[str]
    main_metric: str  # the level table's headline column

    def __init__(self, labels: list[str]) -> None: ...

    @classmethod
    def columns(cls, ds: Dataset, args: DataArguments) -> Columns: ...

    @classmethod
    def label_names(cls, ds: Dataset, cols: Columns) -> list[str]: ...

    def encode(self, ds: Dataset, tokenizer: Any, cols: Columns, max_len: int, what: str, train: bool) -> Dataset: ...

    def collator(self, tokenizer: Any) -> Collator: ...

    def loss(self, out: Tensor, labels: Tensor) -> Tensor: ...

    def distill(self, student: Tensor, teacher: Tensor, labels: Tensor, temperature: float) -> Tensor: ...

    def gather(self, out: Tensor, labels: Tensor | None) -> list[Any]:
        """Per row of the batch, what `metrics` needs (on the CPU, small)."""
        ...

    def metrics(self, preds: list[Any], ds: Dataset) -> dict[str, float]: ...


def pad_collator(tokenizer: Any) -> Collator:
    """Pad the model inputs and labels of a batch (the tokenizer's padding side and id)."""
    from transformers import DataCollatorWithPadding

    pad = DataCollatorWithPadding(tokenizer)
    return lambda rows: pad([{k: r[k] for k in (*MODEL_INPUTS, "labels") if k in r} for r in rows])


def gather_rows(out: Tensor) -> list[Any]:
    """The head's output per row, on the CPU (tasks whose metrics need the whole output)."""
    return list(out.float().cpu())


def keep_columns(ds: Dataset, keep: tuple[str, ...]) -> list[str]:
    """The raw columns to drop when encoding: all but `keep` (e.g. `language`, kept for per-language results)."""
    return [c for c in ds.column_names if c not in keep]


def map_or_fail(
    ds: Dataset, fn: Callable[[dict[str, list[Any]]], dict[str, Any]], remove: list[str], what: str
) -> Dataset:
    """`ds.map(fn, batched=True)` where a tokenizer error on odd input is bad data, not a crash."""
    try:
        return ds.map(fn, batched=True, remove_columns=remove, desc=f"tokenising {what}")
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{what}: cannot tokenise ({str(e).splitlines()[0][:200]})") from None
