import json
from pathlib import Path

import pytest
from conftest import train_tiny
from safetensors.torch import load_file


def test_every_level_learns_the_task(tiny_ckpt: Path) -> None:
    rows = json.loads((tiny_ckpt / "levels.json").read_text())["levels"]
    assert [r["sparsity"] for r in rows] == [round(i / 10, 1) for i in range(10)]
    majority = 0.64  # share of the larger class in validation.csv
    assert rows[0]["accuracy"] >= majority + 0.15
    assert min(r["accuracy"] for r in rows) >= majority + 0.1  # the smallest size learned too, not just dense
    log = [json.loads(line) for line in (tiny_ckpt / "train_log.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in log} == {"importance", "sandwich"}
    assert all(len(r["loss_by_size"]) == 4 for r in log if r["phase"] == "sandwich")  # dense, smallest, 2 random


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_dir: Path, tmp_path: Path) -> None:
    full = train_tiny(tiny_dir, tmp_path / "full", max_steps=24, save_steps=8, eval_steps=8)
    part = tmp_path / "part"
    train_tiny(tiny_dir, part, max_steps=24, save_steps=8, eval_steps=8)
    for extra in ("model.safetensors", "dynsparse.json", "checkpoint-24"):  # as if killed after step 16
        p = part / extra
        if p.is_dir():
            import shutil

            shutil.rmtree(p)
        else:
            p.unlink()
    assert sorted(x.name for x in part.glob("checkpoint-*")) == ["checkpoint-16"]  # save_total_limit 2
    with open(part / "train_log.jsonl", "a") as f:
        f.write('{"step": 2')  # the line a killed run was writing
    train_tiny(tiny_dir, part, max_steps=24, save_steps=8, eval_steps=8, resume_from_checkpoint="latest")
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    steps = [json.loads(line)["step"] for line in (part / "train_log.jsonl").read_text().splitlines()]
    assert steps == [json.loads(line)["step"] for line in (full / "train_log.jsonl").read_text().splitlines()]


def test_resume_from_missing_state_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    from dynsparse.errors import InputError

    with pytest.raises(InputError, match="no checkpoint-STEP folder"):
        train_tiny(tiny_dir, tmp_path / "fresh", max_steps=4, resume_from_checkpoint="latest")


@pytest.mark.parametrize("importance", ["magnitude", "natural"])
def test_other_importance_methods_train(tiny_dir: Path, tmp_path: Path, importance: str) -> None:
    from dynsparse.config import DataArguments, ModelArguments, SparsityArguments, TrainArguments
    from dynsparse.recipe import run_training

    out = run_training(
        ModelArguments(model_name_or_path=str(tiny_dir / "bert")),
        DataArguments(train_file=str(tiny_dir / "train.csv")),
        SparsityArguments(importance=importance, allocation="global", max_sparsity=0.8),  # type: ignore[arg-type]
        TrainArguments(output_dir=str(tmp_path / importance), max_steps=6, gradient_accumulation_steps=2),
    )
    meta = json.loads((out / "dynsparse.json").read_text())
    assert meta["ordering"]["estimator"] == importance and meta["allocation"] == "global"
    assert meta["sparsity_range"] == [0.0, 0.8] and [r["sparsity"] for r in meta["levels"]][-1] == 0.8
    assert "accuracy" not in meta["levels"][0]  # no validation data: costs and latency only


def test_fixed_teacher_and_overwrite(tiny_dir: Path, tmp_path: Path) -> None:
    from dynsparse.config import DataArguments, ModelArguments, SparsityArguments, TrainArguments
    from dynsparse.errors import InputError
    from dynsparse.recipe import run_training

    def train(**kw: object) -> Path:
        return run_training(
            ModelArguments(model_name_or_path=str(tiny_dir / "bert"), teacher_name_or_path=str(tiny_dir / "roberta")),
            DataArguments(train_file=str(tiny_dir / "train.csv")),
            SparsityArguments(importance_ratio=0.0, distill_alpha=1.0),
            TrainArguments(output_dir=str(tmp_path / "t"), max_steps=3, logging_steps=1, **kw),  # type: ignore[arg-type]
        )

    out = train()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in log] == ["sandwich"] * 3 and all(r["loss"] > 0 for r in log)
    with pytest.raises(InputError, match="already holds a checkpoint"):
        train()
    train(overwrite_output_dir=True)
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 3  # a fresh log, not appended


def test_each_run_logs_only_to_its_own_train_log(tiny_dir: Path, tmp_path: Path) -> None:
    """Two runs in one process: the first run's train.log does not receive the second run's records."""
    import logging

    root = logging.getLogger()
    handlers, level = len(root.handlers), root.level
    root.setLevel(logging.INFO)  # as the commands set it
    try:
        first = train_tiny(tiny_dir, tmp_path / "first", max_steps=2)
        size = (first / "train.log").stat().st_size
        train_tiny(tiny_dir, tmp_path / "second", max_steps=2)
    finally:
        root.setLevel(level)
    assert size > 0 and (first / "train.log").stat().st_size == size
    assert (tmp_path / "second" / "train.log").stat().st_size > 0 and len(root.handlers) == handlers


def test_a_trained_range_above_zero_scores_the_whole_model_first(tiny_dir: Path, tmp_path: Path) -> None:
    """--min_sparsity > 0: the importance phase and --mode fine-tune run the full model (the gates cover every unit)."""
    for mode in ("once-for-all", "fine-tune"):
        out = train_tiny(tiny_dir, tmp_path / mode, sparsity={"min_sparsity": 0.2, "mode": mode}, max_steps=12)
        meta = json.loads((out / "dynsparse.json").read_text())
        assert meta["sparsity_range"] == [0.2, 0.9] and meta["levels"][0]["sparsity"] == 0.2
