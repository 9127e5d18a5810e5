import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import dynsparse
from dynsparse.errors import CheckpointError
from dynsparse.writer import sha256_file


@pytest.fixture()
def ckpt_copy(tiny_ckpt: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, dst, ignore=shutil.ignore_patterns("checkpoint-*"))
    return dst


def _logits(model: dynsparse.ElasticModel, s: float) -> torch.Tensor:
    batch = model.tokenizer(["w1 w2 w3", "w4"], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch, sparsity=s).logits


def test_save_load_round_trip_is_exact(tiny_ckpt: Path, tmp_path: Path) -> None:
    model = dynsparse.load(str(tiny_ckpt))
    dynsparse.save(model, tmp_path / "copy")
    again = dynsparse.load(str(tmp_path / "copy"))
    for s in (0.0, 0.3, 0.9):
        assert torch.equal(_logits(model, s), _logits(again, s))
    assert again.meta.levels == model.meta.levels and again.structure(0.5) == model.structure(0.5)
    assert not list((tmp_path / "copy").glob(".tmp-*"))  # the temporary folder is gone


def test_missing_file_is_named(ckpt_copy: Path) -> None:
    (ckpt_copy / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        dynsparse.load(str(ckpt_copy))


def test_not_a_directory() -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        dynsparse.load("/no/such/ckpt")


def test_unknown_format_version(ckpt_copy: Path) -> None:
    meta = json.loads((ckpt_copy / "dynsparse.json").read_text())
    meta["format_version"] = 99
    (ckpt_copy / "dynsparse.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unknown format_version 99"):
        dynsparse.load(str(ckpt_copy))


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("labels", "not-a-list", "labels"),
        ("sparsity_range", [0, 1e308], "sparsity_range"),
        ("allocation", 12, "allocation"),
        ("levels", {"a": 1}, "levels"),
    ],
)
def test_hostile_json_is_refused(ckpt_copy: Path, field: str, value: object, message: str) -> None:
    meta = json.loads((ckpt_copy / "dynsparse.json").read_text())
    meta[field] = value
    (ckpt_copy / "dynsparse.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message):
        dynsparse.load(str(ckpt_copy))


def test_not_json(ckpt_copy: Path) -> None:
    (ckpt_copy / "dynsparse.json").write_text("{nope")
    with pytest.raises(CheckpointError, match="dynsparse.json: not valid JSON"):
        dynsparse.load(str(ckpt_copy))


def test_truncated_weights_fail_the_checksum(ckpt_copy: Path) -> None:
    p = ckpt_copy / "model.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: checksum does not match"):
        dynsparse.load(str(ckpt_copy))


def _rewrite_weights(ckpt: Path, change: dict[str, torch.Tensor]) -> None:
    p = ckpt / "model.safetensors"
    state = load_file(str(p))
    state.update(change)
    save_file(state, str(p))
    meta = json.loads((ckpt / "dynsparse.json").read_text())
    meta["files"]["model.safetensors"]["sha256"] = sha256_file(p)  # a consistent but wrong checkpoint
    (ckpt / "dynsparse.json").write_text(json.dumps(meta))


def test_shape_mismatch_names_the_tensor(ckpt_copy: Path) -> None:
    _rewrite_weights(ckpt_copy, {"layers.0.q_weight": torch.zeros(16, 32)})
    with pytest.raises(CheckpointError, match=r"layers.0.q_weight has shape \(16, 32\).*\(32, 32\)"):
        dynsparse.load(str(ckpt_copy))


def test_garbage_weights_with_matching_checksum(ckpt_copy: Path) -> None:
    p = ckpt_copy / "model.safetensors"
    p.write_bytes(b"\x00" * 64)
    meta = json.loads((ckpt_copy / "dynsparse.json").read_text())
    meta["files"]["model.safetensors"]["sha256"] = sha256_file(p)
    (ckpt_copy / "dynsparse.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        dynsparse.load(str(ckpt_copy))
