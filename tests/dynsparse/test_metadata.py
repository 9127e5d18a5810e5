"""dynsparse.json as a typed record: files written before the record existed read and write back unchanged,
every bad field is one CheckpointError naming the file, and the record cannot be edited in place."""

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest

import dynsparse
from dynsparse.errors import CheckpointError
from dynsparse.metadata import CheckpointMeta, Depth, Ordering
from dynsparse.writer import WEIGHTS, sha256_file

FIXTURES = Path(__file__).parent / "fixtures"  # written by dynsparse before the record (commit 390a700)


def test_a_trained_checkpoint_of_the_old_code_writes_back_byte_for_byte() -> None:
    path = FIXTURES / "dynsparse_v1_trained.json"
    text = path.read_text()
    meta = CheckpointMeta.from_json(json.loads(text), path)
    assert meta.ordering == Ordering("taylor", "once-for-all") and meta.depth == Depth(1, (0, 1), "every-other")
    assert meta.labels == ("0", "1") and meta.main_metric == "accuracy" and meta.max_seq_length == 128
    assert json.dumps(meta.to_json(), indent=2) == text


def test_an_untrained_checkpoint_of_the_old_code_keeps_its_content() -> None:
    path = FIXTURES / "dynsparse_v1_untrained.json"
    meta = CheckpointMeta.from_json(json.loads(path.read_text()), path)
    assert meta.to_json() == json.loads(path.read_text())  # the same object; keys now in the trained order


def test_unknown_keys_are_kept(tmp_path: Path) -> None:
    raw = {**json.loads((FIXTURES / "dynsparse_v1_untrained.json").read_text()), "note": {"by": "hand"}}
    assert CheckpointMeta.from_json(raw, tmp_path).to_json()["note"] == {"by": "hand"}


def test_a_saved_checkpoint_saves_again_unchanged(tiny_ckpt: Path, tmp_path: Path) -> None:
    dynsparse.save(dynsparse.load(str(tiny_ckpt)), tmp_path / "again")
    again, first = ((d / "dynsparse.json").read_text() for d in (tmp_path / "again", tiny_ckpt))
    # the weights' checksum aside: safetensors writes its header's metadata in a per-process hash order
    checksum = re.compile(r'"sha256": "[0-9a-f]{64}"')
    assert checksum.sub("", again) == checksum.sub("", first)
    assert json.loads(again)["files"]["model.safetensors"]["sha256"] == sha256_file(tmp_path / "again" / WEIGHTS)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("columns", {"text": 3}, "columns must map"),
        ("ordering", {"estimator": 1}, "ordering.estimator"),
        ("depth", {"rule": 5}, "depth.rule"),
        ("depth", {"min_layers": 0}, "depth.min_layers"),
        ("vocabulary", {"original": 10, "kept": 11}, "vocabulary.kept"),
        ("vocabulary", [1], "vocabulary must be an object"),
        ("main_metric", 3, "main_metric"),
        ("training", [1], "training"),
        ("format_version", True, "format_version"),
    ],
)
def test_a_bad_field_names_the_file_and_the_field(field: str, value: object, message: str, tmp_path: Path) -> None:
    raw = {**json.loads((FIXTURES / "dynsparse_v1_trained.json").read_text()), field: value}
    with pytest.raises(CheckpointError, match=f"{tmp_path}: .*{message}"):
        CheckpointMeta.from_json(raw, tmp_path)


def test_the_record_is_frozen(tiny_ckpt: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_ckpt, tmp_path / "c", ignore=shutil.ignore_patterns("checkpoint-*"))
    model = dynsparse.load(str(tmp_path / "c"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.meta.task = "question-answering"  # type: ignore[misc]
    with pytest.raises(ValueError, match="allocation"):
        dataclasses.replace(model.meta, allocation="random")
