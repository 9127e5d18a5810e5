"""Data-parallel training: the pure helpers, and two gloo processes under torchrun against one process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import make_tiny, write_csv
from safetensors.torch import load_file

from dynsparse.config import DataArguments, ModelArguments, SparsityArguments, TrainArguments
from dynsparse.distributed import World, average_, gather_objects, resolve_device, shard, sync_gradients, world_from_env
from dynsparse.errors import InputError
from dynsparse.recipe import run_training

ROOT = Path(__file__).resolve().parents[2]


def test_world_comes_from_torchrun_environment() -> None:
    assert world_from_env({}) == World(rank=0, local_rank=0, size=1) and World().is_main
    w = world_from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (w.rank, w.local_rank, w.size, w.is_main, w.distributed) == (3, 1, 4, False, True)
    with pytest.raises(InputError, match="torchrun environment"):
        world_from_env({"WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match="rank < size"):
        World(rank=2, size=2)


def test_each_process_gets_its_own_device() -> None:
    assert resolve_device("cpu", World(1, 1, 2)) == torch.device("cpu")
    assert resolve_device("cuda", World(1, 1, 2)) == torch.device("cuda", 1)  # LOCAL_RANK picks the GPU
    assert resolve_device("cuda:0", World(1, 1, 2)) == torch.device("cuda", 0)  # an explicit index wins
    assert resolve_device("cuda", World()) == torch.device("cuda")


@pytest.mark.parametrize("n", [16, 15, 4, 1])
def test_shards_split_a_global_batch_equally(n: int) -> None:
    idx = torch.randperm(40)[:n]
    shards = [shard(idx, World(r, r, 4)) for r in range(4)]
    assert len({len(s) for s in shards}) == 1 and all(len(s) > 0 for s in shards)  # equal, never empty
    assert set(torch.cat(shards).tolist()) == set(idx.tolist())
    if n % 4 == 0:  # no padding: a partition, in order
        assert torch.equal(torch.cat(shards), idx)


def test_a_world_of_one_communicates_nothing() -> None:
    idx, t, model = torch.arange(5), torch.ones(3), torch.nn.Linear(2, 2)
    assert shard(idx, World()) is idx and gather_objects(World(), {"a": 1}) == [{"a": 1}]
    average_(World(), t)
    assert torch.equal(t, torch.ones(3))
    with sync_gradients(model, sync=False):  # a plain module has no no_sync: a no-op
        model(torch.ones(1, 2)).sum().backward()
    assert model.weight.grad is not None


def test_gradients_are_all_reduced_once_per_optimizer_step(tmp_path: Path) -> None:
    """4 sizes x 2 micro-batches are 8 backwards, but only the last one communicates (no_sync before it)."""
    from torch.nn.parallel import DistributedDataParallel

    from dynsparse.recipe import setup
    from dynsparse.tasks import SequenceClassification
    from dynsparse.trainer import Trainer

    model, train = make_tiny("bert", tmp_path / "bert", dropout=0.0), write_csv(tmp_path / "train.csv", 32, 0)
    s = setup(ModelArguments(str(model)), DataArguments(train_file=str(train)), SparsityArguments())
    args = TrainArguments(
        output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, gradient_accumulation_steps=2
    )
    natural = SparsityArguments(importance="natural")  # sandwich steps from the start: 4 sizes each
    trainer = Trainer(s.model, SequenceClassification(["neg", "pos"]), s.train_ds, None, args, natural)
    calls: list[int] = []

    def count(state: object, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        calls.append(bucket.index())
        fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
        fut.set_result(bucket.buffer())
        return fut

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        trainer.wrapped = DistributedDataParallel(trainer.model)  # a real DDP wrapper, in a world of one
        trainer.wrapped.register_comm_hook(None, count)
        for _ in range(2):
            trainer._step()
        trainer.close()  # release the reducer before the group (see Trainer.close)
    finally:
        dist.destroy_process_group()
    assert calls == [0, 0]  # one bucket (a tiny model), one all-reduce per step


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def _weights_close(a_dir: Path, b_dir: Path, atol: float) -> None:
    a, b = load_file(str(a_dir / "model.safetensors")), load_file(str(b_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol), (k, (a[k] - b[k]).abs().max())


# 6 steps of 2 micro-batches: 2 steps of Taylor importance (gates all-reduced), a rewire, 4 sandwich steps
FLAGS = {
    "max_steps": 6,
    "gradient_accumulation_steps": 2,
    "learning_rate": 2e-3,
    "seed": 0,
    "logging_steps": 1,
    "save_steps": 3,
    "importance_ratio": 0.34,
}


def _torchrun(model: Path, train: Path, out: Path, *extra: str) -> None:
    """train.py in two gloo processes of 4 examples per micro-batch each (global micro-batch 8)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "train.py",
        "--model_name_or_path",
        str(model),
        "--train_file",
        str(train),
        "--output_dir",
        str(out),
        "--per_device_train_batch_size",
        "4",
        *(f"--{k}={v}" for k, v in FLAGS.items()),
        *extra,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same training (no dropout) under torchrun with 2 processes x 4 and in one process x 8."""
    root = tmp_path_factory.mktemp("distributed")
    model, train = make_tiny("bert", root / "bert", dropout=0.0), write_csv(root / "train.csv", 160, 0)
    _torchrun(model, train, root / "ddp")
    run_training(
        ModelArguments(model_name_or_path=str(model)),
        DataArguments(train_file=str(train)),
        SparsityArguments(importance_ratio=FLAGS["importance_ratio"]),
        TrainArguments(
            output_dir=str(root / "one"),
            per_device_train_batch_size=8,
            **{k: v for k, v in FLAGS.items() if k != "importance_ratio"},
        ),  # type: ignore[arg-type]
    )
    return {"model": model, "train": train, "ddp": root / "ddp", "one": root / "one"}


def test_two_gloo_processes_equal_one_process_with_the_global_batch(runs: dict[str, Path]) -> None:
    ddp, one = runs["ddp"], runs["one"]
    _weights_close(ddp, one, atol=1e-5)
    log_ddp, log_one = _log(ddp), _log(one)
    assert [r["phase"] for r in log_ddp] == ["importance"] * 2 + ["sandwich"] * 4  # one line per step: rank 0 only
    for x, y in zip(log_ddp, log_one, strict=True):
        assert x["loss_by_size"].keys() == y["loss_by_size"].keys()  # the same sizes sampled on every rank
        assert x["loss_by_size"] == pytest.approx(y["loss_by_size"], rel=1e-4)  # losses of the whole global batch
    assert json.loads((ddp / "dynsparse.json").read_text())["training"]["world_size"] == 2
    assert (ddp / "checkpoint-3" / "rng_state_1.pt").is_file()  # each rank's generators kept for a resume


def test_a_distributed_run_resumes_on_every_rank(runs: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(runs["ddp"] / "checkpoint-3", tmp_path / "checkpoint-3")  # as if killed after step 3
    _torchrun(runs["model"], runs["train"], tmp_path, "--resume_from_checkpoint=latest")
    _weights_close(tmp_path, runs["ddp"], atol=1e-6)
    assert [r["step"] for r in _log(tmp_path)] == [4, 5, 6]


def test_elastic_depth_trains_the_same_on_two_processes(runs: dict[str, Path], tmp_path: Path) -> None:
    """Whole layers left out of a forward (DDP's unused parameters) still all-reduce to the single-process result,
    and the Taylor layer order agrees across ranks."""
    depth = {"min_depth": 1, "layer_order": "taylor"}
    _torchrun(runs["model"], runs["train"], tmp_path / "ddp", *(f"--{k}={v}" for k, v in depth.items()))
    run_training(
        ModelArguments(model_name_or_path=str(runs["model"])),
        DataArguments(train_file=str(runs["train"])),
        SparsityArguments(importance_ratio=FLAGS["importance_ratio"], **depth),  # type: ignore[arg-type]
        TrainArguments(
            output_dir=str(tmp_path / "one"),
            per_device_train_batch_size=8,
            **{k: v for k, v in FLAGS.items() if k != "importance_ratio"},
        ),  # type: ignore[arg-type]
    )
    _weights_close(tmp_path / "ddp", tmp_path / "one", atol=1e-5)
    metas = [json.loads((tmp_path / d / "dynsparse.json").read_text())["depth"] for d in ("ddp", "one")]
    assert metas[0] == metas[1] and metas[0]["min_layers"] == 1
