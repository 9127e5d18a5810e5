"""Shared fixtures: tiny random encoders (2 layers, 4 heads, hidden 32) with a word-level tokenizer, a small
labelled CSV whose label is learnable, and checkpoints trained through the real recipe: classification, and
token classification, question answering and sentence embeddings on generated data."""

import csv
import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dynsparse.config import DataArguments, ModelArguments, SparsityArguments, TrainArguments

WORDS = [f"w{i}" for i in range(100)]
FAMILIES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra")


def gpu_test(fn):  # noqa: ANN001, ANN201 - decorator
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")(fn))


def make_tokenizer(roberta_style: bool):  # noqa: ANN201
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "<pad>", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>"]
    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(specials + WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if roberta_style:  # <pad> is id 1, as pad_token_id of RoBERTa-style configs
        named = {"pad_token": "<pad>", "cls_token": "<s>", "sep_token": "</s>", "bos_token": "<s>", "eos_token": "</s>"}
    else:
        named = {"pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
    from tokenizers import processors

    cls, sep = named["cls_token"], named["sep_token"]
    ids = {t: i for i, t in enumerate(specials)}
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, ids[cls]), (sep, ids[sep])],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", mask_token="[MASK]", **named)


def make_tiny(
    family: str,
    out: Path,
    seed: int = 0,
    dropout: float | None = None,
    task: str = "text-classification",
    num_labels: int = 2,
) -> Path:
    """A random transformers model of `family` for `task` (a pipeline task name) with a tokenizer, saved at `out`.

    `dropout` overrides the family's default dropout probabilities (0 makes training deterministic).
    """
    import transformers
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
        ElectraConfig,
        ElectraForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
    )

    common = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
        "num_labels": num_labels,
        "vocab_size": 120,
    }
    table = {
        "bert": (BertConfig, BertForSequenceClassification, {}),
        "roberta": (RobertaConfig, RobertaForSequenceClassification, {"pad_token_id": 1}),
        "xlm-roberta": (XLMRobertaConfig, XLMRobertaForSequenceClassification, {"pad_token_id": 1}),
        "electra": (ElectraConfig, ElectraForSequenceClassification, {"embedding_size": 16}),
        "distilbert": (
            DistilBertConfig,
            DistilBertForSequenceClassification,
            {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64},
        ),
    }
    cfg_cls, model_cls, extra = table[family]
    if dropout is not None:
        names = (
            ("dropout", "attention_dropout")
            if family == "distilbert"
            else ("hidden_dropout_prob", "attention_probs_dropout_prob")
        )
        extra = {**extra, **dict.fromkeys(names, dropout)}
    torch.manual_seed(seed)
    if task != "text-classification":
        from dynsparse.tasks import task_spec

        model_cls = getattr(transformers, task_spec(task).auto_class).from_config
    model_cls(cfg_cls(**common, **extra)).save_pretrained(out)
    make_tokenizer(family in ("roberta", "xlm-roberta")).save_pretrained(out)
    return out


def write_csv(path: Path, n: int, seed: int) -> Path:
    """label 1 iff the text holds more even-numbered words than odd ones."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for _ in range(n):
            ids = [rng.randrange(100) for _ in range(rng.randrange(4, 20))]
            w.writerow([" ".join(f"w{i}" for i in ids), int(sum(i % 2 == 0 for i in ids) > len(ids) / 2)])
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with tiny models of every family (bert/, roberta/, ...) and train.csv / validation.csv."""
    root = tmp_path_factory.mktemp("tiny")
    for fam in FAMILIES:
        make_tiny(fam, root / fam)
    write_csv(root / "train.csv", 400, 0)
    write_csv(root / "validation.csv", 100, 1)
    return root


def train_tiny(
    tiny_dir: Path, out: Path, family: str = "bert", sparsity: dict[str, object] | None = None, **train_kwargs: object
) -> Path:
    from dynsparse.recipe import run_training

    targs: dict[str, object] = {
        "output_dir": str(out),
        "max_steps": 150,
        "per_device_train_batch_size": 16,
        "seed": 0,
        "learning_rate": 2e-3,
        "logging_steps": 10,
    }
    targs.update(train_kwargs)
    run_training(
        ModelArguments(model_name_or_path=str(tiny_dir / family)),
        DataArguments(train_file=str(tiny_dir / "train.csv"), validation_file=str(tiny_dir / "validation.csv")),
        SparsityArguments(**(sparsity or {})),  # type: ignore[arg-type]
        TrainArguments(**targs),  # type: ignore[arg-type]
    )
    return out


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint trained by the real recipe (150 steps of once-for-all training on the tiny BERT)."""
    return train_tiny(tiny_dir, tmp_path_factory.mktemp("ckpt") / "run")


# -- the other tasks: learnable generated data, and checkpoints trained on it once per session -------------
TAGS = ["B-EVEN", "I-EVEN", "O"]


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def ner_rows(n: int, seed: int, language: str | None = None) -> list[dict[str, object]]:
    """Runs of even-numbered words are entities (B- then I-); odd words are O."""
    rng, rows = random.Random(seed), []
    for _ in range(n):
        ids = [rng.randrange(100) for _ in range(rng.randrange(4, 13))]
        tags, inside = [], False
        for i in ids:
            tags.append(("I-EVEN" if inside else "B-EVEN") if i % 2 == 0 else "O")
            inside = i % 2 == 0
        row: dict[str, object] = {"tokens": [f"w{i}" for i in ids], "ner_tags": tags}
        rows.append({**row, "language": language} if language else row)
    return rows


def qa_rows(n: int, seed: int) -> list[dict[str, object]]:
    """Contexts of 8-29 distinct words; the answer is the one word from w90..w99 (SQuAD format)."""
    rng, rows = random.Random(seed), []
    for _ in range(n):
        ids = rng.sample(range(90), rng.randrange(8, 30))
        k = rng.randrange(1, len(ids))
        ids[k] = rng.randrange(90, 100)
        words = [f"w{i}" for i in ids]
        start = len(" ".join(words[:k])) + 1
        rows.append(
            {"question": "w1 w2", "context": " ".join(words), "answers": {"text": [words[k]], "answer_start": [start]}}
        )
    return rows


def pair_rows(n: int, seed: int) -> list[dict[str, object]]:
    """A 'translation': word i becomes word i + 50, in another order."""
    rng, rows = random.Random(seed), []
    for _ in range(n):
        ids = [rng.randrange(50) for _ in range(rng.randrange(3, 9))]
        other = [i + 50 for i in ids]
        rng.shuffle(other)
        rows.append({"sentence1": " ".join(f"w{i}" for i in ids), "sentence2": " ".join(f"w{i}" for i in other)})
    return rows


def train_task(
    tmp: Path,
    task: str,
    rows: tuple[list[dict[str, object]], list[dict[str, object]]],
    max_len: int = 128,
    steps: int = 150,
) -> Path:
    """Train a tiny BERT for `task` on `rows` (train, validation) through the real recipe: `tmp/run`."""
    from dynsparse.recipe import run_training

    model = make_tiny("bert", tmp / "model", task=task, num_labels=len(TAGS), dropout=0.0)
    tr, va = write_jsonl(tmp / "train.jsonl", rows[0]), write_jsonl(tmp / "validation.jsonl", rows[1])
    return run_training(
        ModelArguments(str(model)),
        DataArguments(train_file=str(tr), validation_file=str(va), task=task, max_seq_length=max_len),
        SparsityArguments(),
        TrainArguments(
            output_dir=str(tmp / "run"), max_steps=steps, per_device_train_batch_size=16, learning_rate=2e-3, seed=0
        ),
    )


@pytest.fixture(scope="session")
def ner_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Token classification (BIO tags of even-numbered words), 150 steps."""
    return train_task(tmp_path_factory.mktemp("ner"), "token-classification", (ner_rows(400, 0), ner_rows(100, 1)))


@pytest.fixture(scope="session")
def qa_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Question answering with 24-token windows (most contexts span several), 100 steps."""
    rows = (qa_rows(400, 0), qa_rows(100, 1))
    return train_task(tmp_path_factory.mktemp("qa"), "question-answering", rows, max_len=24, steps=100)


@pytest.fixture(scope="session")
def embed_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sentence embeddings (pairs of 'translations'), 100 steps; its validation file is beside it."""
    rows = (pair_rows(400, 0), pair_rows(100, 1))
    return train_task(tmp_path_factory.mktemp("embed"), "feature-extraction", rows, steps=100)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`dynsparse.cli.main`, `run_training` and uvicorn set up logging as a command should (the root logger at DEBUG
    with a console handler, a run's train.log, uvicorn's handlers on the streams of the moment); in this one test
    process, undo that after each test, or later tests log at DEBUG into stale handlers (a closed capture stream,
    old train.log files)."""
    root = logging.getLogger()
    level, before = root.level, set(root.handlers)
    servers = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.error", "uvicorn.access")]
    saved = [(lg.level, lg.handlers[:], lg.propagate) for lg in servers]
    yield
    root.setLevel(level)
    for handler in set(root.handlers) - before:
        if type(handler) is logging.FileHandler or type(handler).__module__.startswith("dynsparse"):
            root.removeHandler(handler)  # pytest's own capture handlers come and go by themselves
            handler.close()
    for lg, (lvl, handlers, propagate) in zip(servers, saved, strict=True):
        lg.setLevel(lvl)
        lg.handlers[:] = handlers
        lg.propagate = propagate
