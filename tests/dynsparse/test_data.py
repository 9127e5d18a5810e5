import json
from pathlib import Path

import pytest

from dynsparse.config import DataArguments
from dynsparse.data import detect_columns, encode, label_names, load_split
from dynsparse.errors import InputError
from dynsparse.pretrained import load_tokenizer


def test_reads_csv_jsonl_and_detects_pairs(tmp_path: Path) -> None:
    p = tmp_path / "pairs.jsonl"
    p.write_text(
        "\n".join(
            json.dumps({"sentence1": f"w{i}", "sentence2": "w1 w2", "label": ["no", "yes"][i % 2]}) for i in range(6)
        )
    )
    ds = load_split(str(p))
    cols = detect_columns(ds, DataArguments())
    assert (cols.text, cols.pair, cols.label) == ("sentence1", "sentence2", "label")
    assert label_names(ds, "label") == ["no", "yes"]


def test_encodes_labels_by_name(tiny_dir: Path, tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("text,label\nw1 w2,pos\nw3,neg\n")
    ds = load_split(str(p))
    enc = encode(
        ds, load_tokenizer(str(tiny_dir / "bert")), detect_columns(ds, DataArguments()), ["neg", "pos"], 16, "data"
    )
    assert enc["labels"] == [1, 0] and enc[0]["input_ids"][0] == 3  # [CLS] first


@pytest.mark.parametrize(
    "content,suffix,message",
    [
        (None, ".csv", "does not exist"),
        ("text,label\n", ".csv", "has no rows"),
        ("a,b\n1,2\n", ".txt", "must be a .csv"),
    ],
)
def test_bad_files(tmp_path: Path, content: str | None, suffix: str, message: str) -> None:
    p = tmp_path / f"data{suffix}"
    if content is not None:
        p.write_text(content)
    with pytest.raises(InputError, match=message):
        load_split(str(p))


def test_missing_columns_are_named(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("review,stars\ngood,5\n")
    ds = load_split(str(p))
    with pytest.raises(InputError, match="label column 'label' not found"):
        detect_columns(ds, DataArguments())
    with pytest.raises(InputError, match="no text column"):
        detect_columns(ds, DataArguments(label_column="stars"))
    assert detect_columns(ds, DataArguments(label_column="stars", text_column="review")).text == "review"


def test_unknown_validation_label(tiny_dir: Path, tmp_path: Path) -> None:
    p = tmp_path / "v.csv"
    p.write_text("text,label\nw1,maybe\n")
    ds = load_split(str(p))
    with pytest.raises(InputError, match="label 'maybe' is not one of the training labels"):
        encode(
            ds,
            load_tokenizer(str(tiny_dir / "bert")),
            detect_columns(ds, DataArguments()),
            ["neg", "pos"],
            16,
            "validation data",
        )
