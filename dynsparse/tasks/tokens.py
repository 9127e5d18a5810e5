"""token-classification: a tag per word (NER, POS). Entity F1 as seqeval computes it (conlleval), and
word accuracy; BIO-tagged data reports F1 as its headline, other tag sets (POS) accuracy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from torch import Tensor

from dynsparse.config import DataArguments
from dynsparse.data import LANGUAGE, Columns
from dynsparse.errors import InputError
from dynsparse.heads import TokenHead
from dynsparse.tasks.base import MODEL_INPUTS, Collator, distill_loss, map_or_fail, pick_column
from dynsparse.tasks.spec import TaskSpec

if TYPE_CHECKING:
    from datasets import Dataset

IGNORE = -100  # labels of sub-word continuations, special tokens and padding: no loss, no metric
_WORDS = ("tokens", "words")
_TAGS = ("ner_tags", "pos_tags", "tags", "labels", "label", "upos")


def is_bio(labels: list[str]) -> bool:
    """Whether a tag set marks entities (BIO or BIOES: "O", "B-PER", ...) rather than one tag per word (POS)."""
    return all(t == "O" or t[:2] in ("B-", "I-", "E-", "S-") for t in labels)


class TokenClassification:
    name = "token-classification"

    def __init__(self, labels: list[str]) -> None:
        if len(labels) < 2:
            raise InputError(f"token classification needs at least 2 tags, the data has {len(labels)}")
        self.labels = list(labels)
        self.main_metric = "f1" if is_bio(self.labels) else "accuracy"

    @classmethod
    def columns(cls, ds: Dataset, args: DataArguments) -> Columns:
        names = ds.column_names
        words = pick_column(names, args.text_column, _WORDS, "word list", "--text_column")
        tags = pick_column(names, args.label_column, _TAGS, "tag", "--label_column")
        return Columns(text=words, pair=None, label=tags)

    @classmethod
    def label_names(cls, ds: Dataset, cols: Columns) -> list[str]:
        assert cols.label is not None
        inner = getattr(ds.features[cols.label], "feature", None)
        if inner is not None and hasattr(inner, "names"):  # a sequence of ClassLabel: ids with names
            return list(inner.names)
        values = {v for row in ds[cols.label] if isinstance(row, list) for v in row if v is not None}
        if not values:
            raise InputError(f"tag column {cols.label!r} holds no lists of tags")
        if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values):
            raise InputError(f"tag column {cols.label!r} must hold lists of tag names or ids")
        return [str(v) for v in sorted(values, key=lambda v: (isinstance(v, str), v))]

    def encode(self, ds: Dataset, tokenizer: Any, cols: Columns, max_len: int, what: str, train: bool) -> Dataset:
        """Label each word's first sub-word; the rest get IGNORE (as transformers' run_ner.py does)."""
        assert cols.label is not None
        index = {name: i for i, name in enumerate(self.labels)}
        words_col, tags_col = cols.text, cols.label

        def _encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
            words = [[str(w) for w in row] if isinstance(row, list) else [] for row in batch[words_col]]
            out = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_len)
            labels = []
            for i, tags in enumerate(batch[tags_col]):
                tags = tags if isinstance(tags, list) else []
                if len(tags) != len(words[i]):
                    raise InputError(f"{what}: a row has {len(words[i])} words but {len(tags)} tags")
                unknown = [t for t in tags if str(t) not in index]
                if unknown:
                    raise InputError(f"{what}: tag {unknown[0]!r} is not one of the training tags {self.labels}")
                labels.append(_align(out.word_ids(i), [index[str(t)] for t in tags]))
            return {**out, "labels": labels}

        ds = ds.filter(lambda b: [isinstance(w, list) and len(w) > 0 for w in b[words_col]], batched=True)
        if len(ds) == 0:
            raise InputError(f"{what}: no rows with words")
        remove = [c for c in ds.column_names if c != LANGUAGE]
        return map_or_fail(ds, _encode, remove, what)

    def collator(self, tokenizer: Any) -> Collator:
        from transformers import DataCollatorForTokenClassification

        pad = DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE)
        return lambda rows: pad([{k: r[k] for k in (*MODEL_INPUTS, "labels") if k in r} for r in rows])

    def loss(self, out: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(out.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)

    def distill(self, student: Tensor, teacher: Tensor, labels: Tensor, temperature: float) -> Tensor:
        keep = labels != IGNORE  # the words' first sub-words, as in the task loss
        return distill_loss(student[keep], teacher[keep], temperature)

    def gather(self, out: Tensor, labels: Tensor | None) -> list[Any]:
        assert labels is not None
        pred = out.argmax(-1).cpu()
        keep = (labels != IGNORE).cpu()
        return [pred[i][keep[i]].tolist() for i in range(pred.shape[0])]

    def metrics(self, preds: list[Any], ds: Dataset) -> dict[str, float]:
        from seqeval.metrics import f1_score, precision_score, recall_score

        refs = [[self.labels[t] for t in row if t != IGNORE] for row in ds["labels"]]
        hyps = [[self.labels[t] for t in row] for row in preds]
        words = sum(len(r) for r in refs)
        out = {
            "accuracy": sum(a == b for r, h in zip(refs, hyps, strict=True) for a, b in zip(r, h, strict=True))
            / max(words, 1)
        }
        if is_bio(self.labels):
            out.update(
                f1=f1_score(refs, hyps, zero_division=0),
                precision=precision_score(refs, hyps, zero_division=0),
                recall=recall_score(refs, hyps, zero_division=0),
            )
        return {k: float(v) for k, v in out.items()}


def _align(word_ids: list[int | None], tags: list[int]) -> list[int]:
    labels, previous = [], None
    for w in word_ids:
        labels.append(tags[w] if w is not None and w != previous else IGNORE)
        previous = w
    return labels


def first_subwords(word_ids: list[int | None], n_words: int) -> list[int | None]:
    """Per word, the index of its first sub-word token (the one training labels); None if it has no token."""
    first: list[int | None] = [None] * n_words
    for t, w in enumerate(word_ids):
        if w is not None and first[w] is None:
            first[w] = t
    return first


Entity = tuple[str, float, int, int]  # (type, mean score, first word, last word)


def group_entities(tags: list[str], scores: list[float]) -> list[Entity]:
    """Runs of BIO(ES) word tags as entities, grouped as transformers' token-classification pipeline does
    (aggregation "simple"): B- and S- start one, I- and E- of the same type continue it (a stray I- starts
    one), E- and S- end it, "O" is no entity. The score is the mean of the words' scores."""
    out: list[Entity] = []
    run: list[int] = []  # word indices of the open entity
    kind = ""

    def close() -> None:
        if run:
            out.append((kind, sum(scores[i] for i in run) / len(run), run[0], run[-1]))
            run.clear()

    for i, tag in enumerate(tags):
        prefix, name = (tag[:1], tag[2:]) if tag[1:2] == "-" else ("O", "")
        if prefix in ("I", "E") and run and name == kind:
            run.append(i)
        else:
            close()
            if prefix != "O":
                run.append(i)
                kind = name
        if prefix in ("E", "S"):
            close()
    close()
    return out


SPEC = TaskSpec(
    name=TokenClassification.name,
    task=TokenClassification,
    auto_class="AutoModelForTokenClassification",
    head=lambda shape, family, dropout: TokenHead(shape, dropout),
    head_weights=lambda family: [("head.classifier", "classifier")],
    endpoint="tokens",
    warm_up="warm up",
)
