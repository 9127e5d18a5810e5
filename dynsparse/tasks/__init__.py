"""Tasks: how a task's data is encoded and batched, its loss and distillation, its metrics, and its `TaskSpec`.

One module per task, each named after transformers' pipeline task:
`text-classification`, `token-classification`, `question-answering` and `feature-extraction`.
Adding a task is one new module (its task class and its `SPEC`) plus one line in `SPECS` below.

Example:
    >>> task = make_task("token-classification", ["O", "B-PER", "I-PER"])
    >>> ds = task.encode(raw, tokenizer, task.columns(raw, data_args), max_len=128, what="data", train=False)
    >>> task.metrics(predictions, ds)      # {"f1": ..., "precision": ..., "recall": ..., "accuracy": ...}
"""

from dynsparse.errors import InputError
from dynsparse.heads import predict_proba
from dynsparse.tasks import classification, embedding, qa, tokens
from dynsparse.tasks.base import Columns, Task, distill_loss
from dynsparse.tasks.classification import SequenceClassification
from dynsparse.tasks.embedding import SentenceEmbedding
from dynsparse.tasks.qa import QuestionAnswering
from dynsparse.tasks.spec import TaskSpec
from dynsparse.tasks.tokens import TokenClassification

SPECS: dict[str, TaskSpec] = {s.name: s for s in (classification.SPEC, tokens.SPEC, qa.SPEC, embedding.SPEC)}
TASKS = tuple(SPECS)  # the task names, as transformers' pipelines and dynsparse.json spell them

__all__ = [
    "SPECS",
    "TASKS",
    "Columns",
    "QuestionAnswering",
    "SentenceEmbedding",
    "SequenceClassification",
    "Task",
    "TaskSpec",
    "TokenClassification",
    "distill_loss",
    "make_task",
    "predict_proba",
    "task_spec",
]


def task_spec(name: str) -> TaskSpec:
    """The record of task `name`; an `InputError` for a task dynsparse does not know."""
    if name not in SPECS:
        raise InputError(f"unsupported task {name!r:.60}; dynsparse supports {', '.join(TASKS)}")
    return SPECS[name]


def task_class(name: str) -> type[Task]:
    return task_spec(name).task


def make_task(name: str, labels: list[str]) -> Task:
    """The task `name` over `labels` (label names; ignored by tasks without labels)."""
    return task_spec(name).task(labels)
