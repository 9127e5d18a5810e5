"""The tasks beyond sequence classification, end to end on tiny models: parity with transformers' task models,
training through the real recipe, every level's metrics, checkpoints, per-language results and bad data."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, TAGS, make_tiny, ner_rows, qa_rows, write_jsonl

import dynsparse
from dynsparse.config import DataArguments
from dynsparse.data import load_split
from dynsparse.tasks import make_task
from dynsparse.tasks.qa import best_answer, normalize, token_f1
from dynsparse.tasks.tokens import first_subwords, group_entities, is_bio

# The data generators and the session's trained checkpoints (ner_ckpt, qa_ckpt, embed_ckpt) are in
# tests/conftest.py: the service tests serve the same checkpoints.


def levels(run: Path) -> list[dict[str, object]]:
    return json.loads((run / "levels.json").read_text())["levels"]


@pytest.fixture(scope="module")
def ner_run(ner_ckpt: Path) -> Path:
    return ner_ckpt


# -- parity with transformers' task models ---------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task", ["token-classification", "question-answering", "feature-extraction"])
def test_sparsity_zero_matches_the_transformers_task_model(tmp_path: Path, family: str, task: str) -> None:
    import transformers

    from dynsparse.tasks import task_spec

    path = make_tiny(family, tmp_path / family, task=task, num_labels=2 if task == "question-answering" else 3)
    hf = getattr(transformers, task_spec(task).auto_class).from_pretrained(path).eval()
    ours = dynsparse.from_pretrained(str(path), task=task)
    ids = torch.tensor([[9, 10, 11, 12, 13, 14], [9, 10, 11, 1 if "roberta" in family else 0, 0, 0]])
    if "roberta" in family:
        ids[1, 3:] = 1  # RoBERTa's pad id
    mask = (torch.arange(6) < torch.tensor([[6], [3]])).long()
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask)
        got = ours(input_ids=ids, attention_mask=mask).logits
    if task == "token-classification":
        want = out.logits
    elif task == "question-answering":
        want = torch.stack([out.start_logits, out.end_logits], -1)
    else:  # mean of the real tokens
        m = mask.unsqueeze(-1).float()
        want = (out.last_hidden_state * m).sum(1) / m.sum(1)
    keep = mask.bool() if got.ndim == 3 else slice(None)
    assert torch.allclose(got[keep], want[keep], atol=1e-5)


# -- token classification --------------------------------------------------------------------------------
def test_token_classification_learns_entities_at_every_level(ner_run: Path) -> None:
    rows = levels(ner_run)
    assert [r["sparsity"] for r in rows] == [round(i / 10, 1) for i in range(10)]
    assert all({"f1", "precision", "recall", "accuracy"} <= set(r) for r in rows)
    # predicting O everywhere scores f1 0 and accuracy about 0.5; every size must have learnt the entities
    assert min(r["f1"] for r in rows) > 0.5 and min(r["accuracy"] for r in rows) > 0.75
    meta = json.loads((ner_run / "dynsparse.json").read_text())
    assert meta["task"] == "token-classification" and meta["labels"] == TAGS and meta["main_metric"] == "f1"


def test_token_checkpoint_reloads_with_its_head(ner_run: Path) -> None:
    model = dynsparse.load(str(ner_run))
    enc = model.tokenizer([["w2", "w4", "w7"]], is_split_into_words=True, return_tensors="pt")
    logits = model(**enc, sparsity=0.5).logits
    assert logits.shape == (1, enc["input_ids"].shape[1], len(TAGS))


def test_seqeval_metrics_count_entities_not_tokens() -> None:
    task = make_task("token-classification", TAGS)
    from datasets import Dataset

    ds = Dataset.from_dict({"labels": [[-100, 0, 1, 2, -100]]})  # gold: one entity of two words
    assert task.metrics([[0, 1, 2]], ds)["f1"] == 1.0
    half = task.metrics([[0, 2, 2]], ds)  # the entity cut short: wrong entity, 2 of 3 words right
    assert half["f1"] == 0.0 and half["accuracy"] == pytest.approx(2 / 3)
    pos = make_task("token-classification", ["ADJ", "NOUN", "VERB"])  # not BIO: accuracy is the headline
    assert pos.main_metric == "accuracy"


def test_bio_tags_group_into_entities_as_transformers_pipeline_does() -> None:
    """B- starts an entity, I- of the same type extends it, a stray I- starts one, E-/S- close one, O is none."""
    tags = ["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "B-LOC", "I-PER", "S-X", "E-X", "B-X", "E-X", "I-X"]
    scores = [1.0, 0.5] + [1.0] * 10
    assert group_entities(tags, scores) == [
        ("PER", 0.75, 0, 1),
        ("LOC", 1.0, 3, 3),
        ("LOC", 1.0, 4, 4),
        ("LOC", 1.0, 5, 5),
        ("PER", 1.0, 6, 6),
        ("X", 1.0, 7, 7),
        ("X", 1.0, 8, 8),
        ("X", 1.0, 9, 10),
        ("X", 1.0, 11, 11),
    ]
    assert group_entities(["O", "O"], [1.0, 1.0]) == [] and is_bio(TAGS) and not is_bio(["NOUN", "O"])
    assert first_subwords([None, 0, 0, 1, None, 3, None], 4) == [1, 3, None, 5]  # word 2 has no token


# -- question answering ------------------------------------------------------------------------------------
def test_question_answering_finds_spans_across_windows(qa_ckpt: Path) -> None:
    """max_seq_length 24 splits most contexts into overlapping windows; answers map back to the text."""
    rows = levels(qa_ckpt)
    assert all({"exact_match", "f1"} <= set(r) for r in rows)
    assert rows[0]["exact_match"] > 0.9 and min(r["f1"] for r in rows) > 0.8


def test_answers_are_mapped_back_through_offsets(tmp_path: Path) -> None:
    """With logits that point at the gold tokens, every window's best span is the gold text exactly."""
    make_tiny("bert", tmp_path / "m", task="question-answering")
    tok = dynsparse.from_pretrained(str(tmp_path / "m"), task="question-answering").tokenizer
    raw = load_split(str(write_jsonl(tmp_path / "qa.jsonl", qa_rows(30, 2))))
    task = make_task("question-answering", [])
    cols = task.columns(raw, DataArguments(task="question-answering"))
    train_ds = task.encode(raw, tok, cols, 24, "data", train=True)
    eval_ds = task.encode(raw, tok, cols, 24, "data", train=False)
    assert len(train_ds) == len(eval_ds) > len(raw)  # long contexts became several windows
    preds = []
    for feats, (start, end) in zip(eval_ds, train_ds["labels"], strict=True):
        lg = torch.full((len(feats["input_ids"]), 2), -10.0)
        lg[start, 0] = lg[end, 1] = 10.0 if start else -10.0  # windows without the answer point nowhere
        preds.append(lg.numpy())
    assert task.metrics(preds, eval_ds) == {"exact_match": 1.0, "f1": 1.0}
    assert best_answer([preds[0]], [eval_ds[0]["offset_mapping"]], eval_ds[0]["context"]) in raw["context"][0]


def test_squad_normalisation() -> None:
    assert normalize("The  Eiffel-Tower!") == "eiffeltower"
    assert token_f1("the big cat", "a big dog") == pytest.approx(0.5)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0


# -- sentence embeddings ---------------------------------------------------------------------------------
def test_embeddings_learn_to_match_translations(embed_ckpt: Path, tmp_path: Path) -> None:
    task = make_task("feature-extraction", [])
    untrained = make_tiny("bert", tmp_path / "untrained", task="feature-extraction")
    run = embed_ckpt
    rows = levels(run)
    assert min(r["accuracy_at_1"] for r in rows) > 0.8
    # the same evaluation of the untrained encoder is near chance (1 in 100)
    model = dynsparse.from_pretrained(str(untrained), task="feature-extraction")
    raw = load_split(str(run.parent / "validation.jsonl"))
    ds = task.encode(raw, model.tokenizer, task.columns(raw, DataArguments()), 64, "data", train=False)
    from dynsparse.evaluate import predict_levels

    base = task.metrics(predict_levels(model, task, ds, [0.0], progress=False)[0.0], ds)["accuracy_at_1"]
    assert base < rows[0]["accuracy_at_1"] - 0.3
    reloaded = dynsparse.load(str(run))
    assert reloaded.task == "feature-extraction" and reloaded.meta.labels == ()


# -- per-language results ------------------------------------------------------------------------------
def _evaluate(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynsparse.cli", "evaluate", *args], capture_output=True, text=True, timeout=300
    )


def test_evaluate_reports_every_level_per_language(ner_run: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "multi.jsonl", ner_rows(60, 3, "de") + ner_rows(40, 4, "tr"))
    r = _evaluate(
        [
            str(ner_run),
            "--validation_file",
            str(data),
            "--output_dir",
            str(tmp_path / "ev"),
            "--levels",
            "0",
            "0.5",
            "0.9",
            "--latency_seq_len",
            "16",
        ]
    )
    assert r.returncode == 0, r.stderr
    rows = levels(tmp_path / "ev")
    for row in rows:
        assert set(row["by_language"]) == {"de", "tr"}
        mean = (row["by_language"]["de"]["f1"] + row["by_language"]["tr"]["f1"]) / 2
        assert row["language_average"]["f1"] == pytest.approx(mean, abs=1e-4)
    assert (tmp_path / "ev" / "languages.png").stat().st_size > 5000
    assert "f1 by language" in r.stdout and "average" in r.stdout


def test_one_file_per_language(ner_run: Path, tmp_path: Path) -> None:
    files = [write_jsonl(tmp_path / name, ner_rows(30, i)) for i, name in enumerate(["es.jsonl", "validation.nl.json"])]
    r = _evaluate(
        [
            str(ner_run),
            "--validation_file",
            *map(str, files),
            "--output_dir",
            str(tmp_path / "ev"),
            "--levels",
            "0",
            "0.5",
            "--latency_seq_len",
            "16",
        ]
    )
    assert r.returncode == 0, r.stderr
    assert set(levels(tmp_path / "ev")[0]["by_language"]) == {"es", "nl"}


# -- bad data --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "task,row,message",
    [
        ("token-classification", {"tokens": ["w1", "w2", "w3"], "ner_tags": ["O", "B-EVEN"]}, "3 words but 2 tags"),
        ("token-classification", {"words_x": ["w1"], "ner_tags": ["O"]}, "no word list column"),
        ("question-answering", {"question": "q", "context": "c", "answers": "c"}, "answers must be"),
        ("feature-extraction", {"sentence1": "w1"}, "no second sentence column"),
    ],
)
def test_bad_task_data_is_one_line_and_exit_2(tmp_path: Path, task: str, row: dict[str, object], message: str) -> None:
    make_tiny("bert", tmp_path / "m", task=task)
    data = write_jsonl(tmp_path / "train.jsonl", [row, row])
    r = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--model_name_or_path",
            str(tmp_path / "m"),
            "--task",
            task,
            "--train_file",
            str(data),
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
