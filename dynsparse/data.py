"""Data loading through `datasets`: csv/tsv/json/jsonl files (or a hub name), column detection, tokenisation."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from dynsparse.config import DataArguments
from dynsparse.errors import InputError

if TYPE_CHECKING:  # datasets is imported when data is loaded: the service imports this module, never datasets
    from datasets import Dataset

T = TypeVar("T")

LANGUAGE = "language"  # a column of this name splits the results by language


def group_rows(values: Sequence[T]) -> dict[T, list[int]]:
    """Row indices per distinct value, in order of first appearance (e.g. each language's rows of a batch)."""
    rows: dict[T, list[int]] = {}
    for i, v in enumerate(values):
        rows.setdefault(v, []).append(i)
    return rows


_EXT = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}
_TEXT_COLUMNS = ("text", "sentence", "sentence1", "question", "premise")
_PAIR_COLUMNS = {"sentence1": "sentence2", "question": "sentence", "premise": "hypothesis"}


@dataclass(frozen=True)
class Columns:
    text: str  # the text, the word list (tokens), the question (QA) or the first sentence (pairs)
    pair: str | None  # the second text, the context (QA) or the second sentence (pairs)
    label: str | None  # labels, tags or answers; None for embeddings


def load_split(source: str, what: str = "data") -> "Dataset":
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


def language_of(source: str) -> str:
    """The language a file's name gives: `de.jsonl` and `validation.de.csv.bz2` are both `de`."""
    parts = [p for p in Path(source).name.split(".") if p and "." + p not in (*_EXT, ".bz2", ".gz", ".xz", ".zst")]
    return parts[-1] if parts else Path(source).name


def load_splits(sources: list[str], what: str = "data") -> "Dataset":
    """One split from one source, or from one file per language: each file's rows get the language its name
    gives (`de.jsonl`, `valid.de.jsonl` -> `de`) as their `language` column, unless they carry one already."""
    from datasets import concatenate_datasets

    if len(sources) == 1:
        return load_split(sources[0], what)
    parts = []
    for source in sources:
        ds = load_split(source, what)
        if LANGUAGE not in ds.column_names:
            ds = ds.add_column(LANGUAGE, [language_of(source)] * len(ds))
        parts.append(ds)
    try:
        return concatenate_datasets(parts)
    except ValueError as e:
        raise InputError(f"{what}: the files' columns differ ({str(e).splitlines()[0][:200]})") from None


def detect_columns(ds: "Dataset", args: DataArguments) -> Columns:
    """The text (and pair) column: explicit flags first, else the usual names of GLUE-style data."""
    names = ds.column_names
    label = args.label_column or "label"
    if label not in names:
        raise InputError(f"label column {label!r} not found; columns are {names}")
    text = args.text_column or next((c for c in _TEXT_COLUMNS if c in names), None)
    if text is None:
        raise InputError(f"no text column found (looked for {_TEXT_COLUMNS}); pass --text_column, columns: {names}")
    pair = args.text_pair_column or (_PAIR_COLUMNS.get(text) if _PAIR_COLUMNS.get(text) in names else None)
    for col in (text, pair):
        if col is not None and col not in names:
            raise InputError(f"column {col!r} not found; columns are {names}")
    return Columns(text=text, pair=pair, label=label)


def label_names(ds: "Dataset", column: str) -> list[str]:
    """Label names in id order: a ClassLabel's names, else the sorted distinct values."""
    feature = ds.features[column]
    from datasets import ClassLabel

    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = [v for v in ds.unique(column) if v is not None]
    if not values:
        raise InputError(f"label column {column!r} has no values")
    if all(isinstance(v, bool) for v in values) or not all(isinstance(v, (int, str, bool)) for v in values):
        raise InputError(f"label column {column!r} must hold class ids or names, got values like {values[:3]}")
    return [str(v) for v in sorted(values)]


def encode(ds: "Dataset", tokenizer: Any, cols: Columns, labels: list[str], max_len: int, what: str) -> "Dataset":
    """Tokenise (no padding: batches pad to their longest) and map labels to ids; unknown labels are an error."""
    index = {name: i for i, name in enumerate(labels)}

    def _encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        texts = [t if isinstance(t, str) else "" for t in batch[cols.text]]
        pairs = [t if isinstance(t, str) else "" for t in batch[cols.pair]] if cols.pair else None
        out = dict(tokenizer(texts, pairs, truncation=True, max_length=max_len))
        unknown = [v for v in batch[label_col] if str(v) not in index]
        if unknown:
            raise InputError(f"{what}: label {unknown[0]!r} is not one of the training labels {labels}")
        out["labels"] = [index[str(v)] for v in batch[label_col]]
        return out

    assert cols.label is not None
    label_col = cols.label
    ds = ds.filter(lambda b: [v is not None for v in b[label_col]], batched=True)
    if len(ds) == 0:
        raise InputError(f"{what}: no rows with a label")
    try:
        remove = [c for c in ds.column_names if c != LANGUAGE]  # kept for per-language results
        return ds.map(_encode, batched=True, remove_columns=remove, desc=f"tokenising {what}")
    except InputError:
        raise
    except Exception as e:  # a tokenizer error on odd input is bad data, not a crash
        raise InputError(f"{what}: cannot tokenise ({str(e).splitlines()[0][:200]})") from None
