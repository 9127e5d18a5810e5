"""The task registry: one `TaskSpec` per task, each complete and consistent with what uses it."""

import pytest
import transformers

from dynsparse.errors import InputError
from dynsparse.family import family_for
from dynsparse.tasks import SPECS, TASKS, make_task, task_spec
from dynsparse.tasks.base import Task


@pytest.mark.parametrize("name", TASKS)
def test_each_spec_is_complete(name: str) -> None:
    spec = task_spec(name)
    assert spec.name == name == spec.task.name
    assert hasattr(transformers, spec.auto_class)
    task: Task = make_task(name, ["a", "b"])
    assert isinstance(task.main_metric, str) and callable(task.collator)
    for ours, theirs in spec.head_weights(family_for("bert")):
        assert ours.startswith("head.") and theirs


def test_endpoints_are_distinct_and_served() -> None:
    from service.codec import ENDPOINTS, served_endpoints, warm_up_item

    assert sorted(s.endpoint for s in SPECS.values()) == sorted(ENDPOINTS)
    for name in TASKS:
        assert served_endpoints(name)[0] == task_spec(name).endpoint
        assert warm_up_item(task_spec(name).endpoint) == task_spec(name).warm_up


def test_an_unknown_task_is_one_clear_error() -> None:
    with pytest.raises(InputError, match="unsupported task 'summarization'; dynsparse supports text-classification"):
        task_spec("summarization")
