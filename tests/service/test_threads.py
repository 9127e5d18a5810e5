from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

import dynsparse
from service.engine import Engine
from service.settings import Settings
from service.threads import ThreadPlan


def _plan(model: dynsparse.ElasticModel, single_below: int = 256) -> ThreadPlan:
    return ThreadPlan(2, single_below, model.shape)


def test_small_work_gets_one_thread_and_large_work_all(reference: dynsparse.ElasticModel) -> None:
    plan = _plan(reference)
    dense, small = reference.structure(0.0), reference.structure(0.9)
    assert plan.count(25, dense) == 1  # one sentence, dense
    assert plan.count(400, dense) == 2  # 16 sentences, dense
    assert plan.count(400, small) == 1  # the same batch at sparsity 0.9 keeps a tenth of the work
    assert _plan(reference, 0).count(1, small) == 2  # 0 turns the rule off


def test_kept_share_follows_the_structure(reference: dynsparse.ElasticModel) -> None:
    plan = _plan(reference)
    assert plan.kept(reference.structure(0.0)) == 1.0
    shares = [plan.kept(reference.structure(s)) for s in (0.0, 0.5, 0.9)]
    assert shares == sorted(shares, reverse=True) and 0.4 < shares[1] < 0.6
    assert plan.kept(((0, 0),) * reference.shape.layers) == 0.0  # every layer dropped by depth


def test_the_engine_runs_each_batch_on_its_thread_count(make_settings: Callable[..., Settings]) -> None:
    engine = Engine.load(make_settings(torch_threads=2, single_thread_below=64, max_batch_size=64))
    worker = ThreadPoolExecutor(1)  # as the batcher's worker: the count is set on the thread that runs the batch

    def threads_after(texts: list[str]) -> int:
        def go() -> int:
            engine.run("classify", engine.structure(0.0), [texts])
            return torch.get_num_threads()

        return worker.submit(go).result()

    assert threads_after(["one short text"]) == 1
    assert threads_after(["a longer text of several words, one of many"] * 20) == 2
    assert threads_after(["one short text"]) == 1
    assert "2 threads" in engine.device_name  # the profile's device key does not flip with the batch
