"""Data loading through `datasets`: csv/tsv/json/jsonl files (or a hub name), column detection, tokenisation."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset

from dynsparse.config import DataArguments
from dynsparse.errors import InputError

_EXT = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}
_TEXT_COLUMNS = ("text", "sentence", "sentence1", "question", "premise")
_PAIR_COLUMNS = {"sentence1": "sentence2", "question": "sentence", "premise": "hypothesis"}


@dataclass(frozen=True)
class Columns:
    text: str
    pair: str | None
    label: str


def load_split(source: str, what: str = "data") -> Dataset:
    """One split from a local file (compressed too: `.csv.bz2`) or a datasets hub name (`name` or `name:split`)."""
    from datasets import load_dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    path = Path(source)
    suffixes = [s for s in path.suffixes if s in _EXT]
    try:
        if path.exists():
            if not path.is_file() or not suffixes:
                raise InputError(f"{what} file {source!r} must be a .csv, .tsv, .json or .jsonl file")
            if path.stat().st_size == 0:
                raise InputError(f"{what} {source!r} is empty")
            kwargs = {"delimiter": "\t"} if suffixes[-1] == ".tsv" else {}
            ds = load_dataset(_EXT[suffixes[-1]], data_files=str(path), split="train", **kwargs)
        elif suffixes or source.startswith((".", "/", "~")):
            raise InputError(f"{what} file {source!r} does not exist")
        else:  # a hub data set, "name" or "name:split"; needs a reachable hub
            name, _, split = source.partition(":")
            ds = load_dataset(name, split=split or "train")
    except InputError:
        raise
    except Exception as e:  # datasets raises many types for unreadable files; all are bad input here
        if "corresponds to no data" in str(e):
            raise InputError(f"{what} {source!r} has no rows") from None
        raise InputError(f"cannot read {what} {source!r}: {str(e).splitlines()[0][:300]}") from None
    if len(ds) == 0:
        raise InputError(f"{what} {source!r} has no rows")
    return ds


def detect_columns(ds: Dataset, args: DataArguments) -> Columns:
    """The text (and pair) column: explicit flags first, else the usual names of GLUE-style data."""
    names = ds.column_names
    if args.label_column not in names:
        raise InputError(f"label column {args.label_column!r} not found; columns are {names}")
    text = args.text_column or next((c for c in _TEXT_COLUMNS if c in names), None)
    if text is None:
        raise InputError(f"no text column found (looked for {_TEXT_COLUMNS}); pass --text_column, columns: {names}")
    pair = args.text_pair_column or (_PAIR_COLUMNS.get(text) if _PAIR_COLUMNS.get(text) in names else None)
    for col in (text, pair):
        if col is not None and col not in names:
            raise InputError(f"column {col!r} not found; columns are {names}")
    return Columns(text=text, pair=pair, label=args.label_column)


def label_names(ds: Dataset, column: str) -> list[str]:
    """Label names in id order: a ClassLabel's names, else the sorted distinct values."""
    feature = ds.features[column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = [v for v in ds.unique(column) if v is not None]
    if not values:
        raise InputError(f"label column {column!r} has no values")
    if all(isinstance(v, bool) for v in values) or not all(isinstance(v, (int, str, bool)) for v in values):
        raise InputError(f"label column {column!r} must hold class ids or names, got values like {values[:3]}")
    return [str(v) for v in sorted(values)]


def encode(ds: Dataset, tokenizer: Any, cols: Columns, labels: list[str], max_len: int, what: str) -> Dataset:
    """Tokenise (no padding: batches pad to their longest) and map labels to ids; unknown labels are an error."""
    index = {name: i for i, name in enumerate(labels)}

    def _encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        texts = [t if isinstance(t, str) else "" for t in batch[cols.text]]
        pairs = [t if isinstance(t, str) else "" for t in batch[cols.pair]] if cols.pair else None
        out = dict(tokenizer(texts, pairs, truncation=True, max_length=max_len))
        unknown = [v for v in batch[cols.label] if str(v) not in index]
        if unknown:
            raise InputError(f"{what}: label {unknown[0]!r} is not one of the training labels {labels}")
        out["labels"] = [index[str(v)] for v in batch[cols.label]]
        return out

    ds = ds.filter(lambda b: [v is not None for v in b[cols.label]], batched=True)
    if len(ds) == 0:
        raise InputError(f"{what}: no rows with a label")
    try:
        return ds.map(_encode, batched=True, remove_columns=ds.column_names, desc=f"tokenising {what}")
    except InputError:
        raise
    except Exception as e:  # a tokenizer error on odd input is bad data, not a crash
        raise InputError(f"{what}: cannot tokenise ({str(e).splitlines()[0][:200]})") from None
