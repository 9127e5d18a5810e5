"""Tasks: how a task's data is encoded and batched, its loss and distillation, and its metrics.

One module per task, each named after transformers' pipeline task:
`text-classification`, `token-classification`, `question-answering` and `feature-extraction`.

Example:
    >>> task = make_task("token-classification", ["O", "B-PER", "I-PER"])
    >>> ds = task.encode(raw, tokenizer, task.columns(raw, data_args), max_len=128, what="data", train=False)
    >>> task.metrics(predictions, ds)      # {"f1": ..., "precision": ..., "recall": ..., "accuracy": ...}
"""

from dynsparse.errors import InputError
from dynsparse.heads import TASKS, predict_proba
from dynsparse.tasks.base import Columns, Task, distill_loss
from dynsparse.tasks.classification import SequenceClassification
from dynsparse.tasks.embedding import SentenceEmbedding
from dynsparse.tasks.qa import QuestionAnswering
from dynsparse.tasks.tokens import TokenClassification

_BY_NAME: dict[str, type[Task]] = {
    "text-classification": SequenceClassification,
    "token-classification": TokenClassification,
    "question-answering": QuestionAnswering,
    "feature-extraction": SentenceEmbedding,
}

__all__ = ["TASKS", "Columns", "Task", "distill_loss", "make_task", "predict_proba", "task_class"]


def task_class(name: str) -> type[Task]:
    if name not in _BY_NAME:
        raise InputError(f"unsupported task {name!r}; dynsparse supports {', '.join(TASKS)}")
    return _BY_NAME[name]


def make_task(name: str, labels: list[str]) -> Task:
    """The task `name` over `labels` (label names; ignored by tasks without labels)."""
    return task_class(name)(labels)
