"""Shared fixtures: tiny random encoders (2 layers, 4 heads, hidden 32) with a word-level tokenizer, a small
labelled CSV whose label is learnable, and a checkpoint trained through the real recipe."""

import csv
import random
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
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, ids[cls]), (sep, ids[sep])],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", mask_token="[MASK]", **named)


def make_tiny(
    family: str, out: Path, seed: int = 0, dropout: float | None = None, task: str = "text-classification",
    num_labels: int = 2,
) -> Path:  # fmt: skip
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
        XLMRobertaForSequenceClassification,  # fmt: skip
    )

    common = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
              "max_position_embeddings": 128, "num_labels": num_labels, "vocab_size": 120}
    table = {
        "bert": (BertConfig, BertForSequenceClassification, {}),
        "roberta": (RobertaConfig, RobertaForSequenceClassification, {"pad_token_id": 1}),
        "xlm-roberta": (XLMRobertaConfig, XLMRobertaForSequenceClassification, {"pad_token_id": 1}),
        "electra": (ElectraConfig, ElectraForSequenceClassification, {"embedding_size": 16}),
        "distilbert": (DistilBertConfig, DistilBertForSequenceClassification,
                       {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64}),
    }  # fmt: skip
    cfg_cls, model_cls, extra = table[family]
    if dropout is not None:
        names = ("dropout", "attention_dropout") if family == "distilbert" else \
            ("hidden_dropout_prob", "attention_probs_dropout_prob")  # fmt: skip
        extra = {**extra, **dict.fromkeys(names, dropout)}
    torch.manual_seed(seed)
    if task != "text-classification":
        from dynsparse.heads import AUTO_CLASS

        model_cls = getattr(transformers, AUTO_CLASS[task]).from_config
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


def train_tiny(tiny_dir: Path, out: Path, family: str = "bert", **train_kwargs: object) -> Path:
    from dynsparse.recipe import run_training

    targs: dict[str, object] = {"output_dir": str(out), "max_steps": 150, "per_device_train_batch_size": 16,
                                "seed": 0, "learning_rate": 2e-3, "logging_steps": 10}
    targs.update(train_kwargs)
    run_training(
        ModelArguments(model_name_or_path=str(tiny_dir / family)),
        DataArguments(train_file=str(tiny_dir / "train.csv"), validation_file=str(tiny_dir / "validation.csv")),
        SparsityArguments(),
        TrainArguments(**targs),  # type: ignore[arg-type]
    )
    return out


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint trained by the real recipe (150 steps of once-for-all training on the tiny BERT)."""
    return train_tiny(tiny_dir, tmp_path_factory.mktemp("ckpt") / "run")
