"""`TaskSpec`: everything dynsparse knows about one task, in one record (one per task module).

The registry (`dynsparse.tasks.SPECS`) is the only table keyed by task name: the model builds its head
from it, `from_pretrained` finds transformers' auto class and the head's weights, and the service
finds the endpoint that serves the task and its warm-up input (the service keeps its codecs, keyed by
the endpoint name: the core never imports the service).
"""

from collections.abc import Callable
from dataclasses import dataclass

from dynsparse.family import EncoderShape, Family
from dynsparse.heads import Head
from dynsparse.tasks.base import Task


@dataclass(frozen=True)
class TaskSpec:
    name: str  # transformers' pipeline task name, as in dynsparse.json
    task: type[Task]  # the task class: columns, encoding, collate, loss, metrics
    auto_class: str  # transformers' auto class for the task (an attribute of `transformers`)
    head: Callable[[EncoderShape, Family, float], Head]  # (shape, family, dropout) -> the task head
    head_weights: Callable[[Family], list[tuple[str, str]]]  # (our module, transformers' module) per head layer
    endpoint: str  # the service endpoint that serves it (POST /v1/<endpoint>)
    warm_up: str | tuple[str, ...]  # a small valid input of that endpoint, run once per size at startup
