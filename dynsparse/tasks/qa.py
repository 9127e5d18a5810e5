"""question-answering: extractive QA, SQuAD style. Long contexts are split into overlapping windows; a
prediction is the best span over an example's windows, mapped back to the context's characters through
the tokenizer's offsets, and scored by exact match and token F1 (the official SQuAD normalisation), as
fractions of 1 like every metric in the level table."""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from dynsparse.config import DataArguments
from dynsparse.data import LANGUAGE, Columns
from dynsparse.errors import InputError
from dynsparse.heads import SpanHead
from dynsparse.tasks.base import Collator, distill_loss, map_or_fail, pad_collator, pick_column
from dynsparse.tasks.spec import TaskSpec

if TYPE_CHECKING:
    from datasets import Dataset

N_BEST, MAX_ANSWER_TOKENS = 20, 30
Offset = tuple[int, int]  # a token's characters in the text: text[start:end]


class QuestionAnswering:
    name = "question-answering"
    main_metric = "f1"

    def __init__(self, labels: list[str] | None = None) -> None:
        self.labels = ["start", "end"]

    @classmethod
    def label_names(cls, ds: Dataset, cols: Columns) -> list[str]:
        return []  # the two span logits are fixed

    def collator(self, tokenizer: Any) -> Collator:
        return pad_collator(tokenizer)

    @classmethod
    def columns(cls, ds: Dataset, args: DataArguments) -> Columns:
        names = ds.column_names
        return Columns(
            text=pick_column(names, args.text_column, ("question",), "question", "--text_column"),
            pair=pick_column(names, args.text_pair_column, ("context",), "context", "--text_pair_column"),
            label=pick_column(names, args.label_column, ("answers",), "answers", "--label_column"),
        )

    def encode(self, ds: Dataset, tokenizer: Any, cols: Columns, max_len: int, what: str, train: bool) -> Dataset:
        """Windows of `max_len` tokens over the context (stride: a quarter window), each with the answer's
        token span (training; the first token when the answer lies outside the window), or with what the
        metrics need (evaluation: offsets, the example's index, its context and gold answers)."""
        if not tokenizer.is_fast:
            raise InputError("question answering needs a fast tokenizer (character offsets)")
        q_col, c_col, a_col = cols.text, cols.pair, cols.label
        assert c_col is not None and a_col is not None

        def _encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
            contexts = [str(c or "") for c in batch[c_col]]
            answers = [_answers(a, what) for a in batch[a_col]]
            w = encode_windows(tokenizer, [str(q or "") for q in batch[q_col]], contexts, max_len)
            out: dict[str, Any] = dict(w.encoding.items())
            if train:
                out["labels"] = [_span(w.offsets[i], answers[j]) for i, j in enumerate(w.sample)]
            else:
                out["offset_mapping"] = w.offsets
                out["example_id"] = [batch["__index"][j] for j in w.sample]
                out["context"] = [contexts[j] for j in w.sample]
                out["answer_texts"] = [[t for t, _ in answers[j]] for j in w.sample]
            if LANGUAGE in batch:
                out[LANGUAGE] = [batch[LANGUAGE][j] for j in w.sample]
            return out

        ds = ds.add_column("__index", list(range(len(ds))))
        return map_or_fail(ds, _encode, ds.column_names, what)

    def loss(self, out: Tensor, labels: Tensor) -> Tensor:
        start, end = out.float().unbind(-1)  # (B, T) each
        return (F.cross_entropy(start, labels[:, 0]) + F.cross_entropy(end, labels[:, 1])) / 2

    def distill(self, student: Tensor, teacher: Tensor, labels: Tensor, temperature: float) -> Tensor:
        parts = [distill_loss(student[..., k], teacher[..., k], temperature) for k in (0, 1)]
        return (parts[0] + parts[1]) / 2

    def gather(self, out: Tensor, labels: Tensor | None) -> list[Any]:
        return list(out.float().cpu().numpy())  # (T, 2) per window

    def metrics(self, preds: list[Any], ds: Dataset) -> dict[str, float]:
        windows: dict[int, list[int]] = {}
        for i, ex in enumerate(ds["example_id"]):
            windows.setdefault(ex, []).append(i)
        offsets, contexts, golds = ds["offset_mapping"], ds["context"], ds["answer_texts"]
        em = f1 = 0.0
        for rows in windows.values():
            text = best_answer([preds[i] for i in rows], [offsets[i] for i in rows], contexts[rows[0]])
            gold = golds[rows[0]] or [""]
            em += max(float(normalize(text) == normalize(g)) for g in gold)
            f1 += max(token_f1(text, g) for g in gold)
        n = max(len(windows), 1)
        return {"exact_match": em / n, "f1": f1 / n}


def _answers(value: Any, what: str) -> list[tuple[str, int]]:
    """(text, start character) pairs from SQuAD's {"text": [...], "answer_start": [...]}."""
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("text"), list)
        or not isinstance(value.get("answer_start"), list)
    ):
        raise InputError(f"{what}: answers must be {{'text': [...], 'answer_start': [...]}}, got {str(value)[:80]}")
    return [(str(t), int(s)) for t, s in zip(value["text"], value["answer_start"], strict=False)]


def _span(offsets: list[Offset | None], answers: list[tuple[str, int]]) -> list[int]:
    """Token (start, end) of the first answer inside this window; (0, 0), the first token, when outside."""
    if not answers:
        return [0, 0]
    text, start_char = answers[0]
    end_char = start_char + len(text)
    ctx = [(i, o) for i, o in enumerate(offsets) if o is not None]
    if not ctx or ctx[0][1][0] > start_char or ctx[-1][1][1] < end_char:
        return [0, 0]
    start = next(i for i, o in ctx if o[1] > start_char)
    end = next(i for i, o in reversed(ctx) if o[0] < end_char)
    return [start, max(start, end)]


def window_stride(max_len: int) -> int:
    """Tokens shared by consecutive windows of one context: a quarter window, at most 128 (as SQuAD scripts)."""
    return max(1, min(128, max_len // 4))


@dataclass(frozen=True)
class Windows:
    """Question + context pairs as windows of at most `max_len` tokens over the contexts."""

    encoding: Any  # the tokenizer's BatchEncoding: input_ids, attention_mask (and token_type_ids) per window
    sample: list[int]  # per window, the index of its question/context pair
    offsets: list[list[Offset | None]]  # per window and token: its characters in the context (None: not context)


def encode_windows(tokenizer: Any, questions: list[str], contexts: list[str], max_len: int) -> Windows:
    """Tokenise pairs as training, evaluation and the server do: the question whole (left-stripped), the
    context in overlapping windows (`window_stride`), with each context token's character offsets."""
    enc = tokenizer(
        [q.lstrip() for q in questions],
        contexts,
        truncation="only_second",
        max_length=max_len,
        stride=window_stride(max_len),
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    sample = enc.pop("overflow_to_sample_mapping")
    offsets = enc.pop("offset_mapping")
    ctx = [
        [(o[0], o[1]) if s == 1 else None for o, s in zip(offsets[i], enc.sequence_ids(i), strict=True)]
        for i in range(len(sample))
    ]
    return Windows(enc, list(sample), ctx)


@dataclass(frozen=True)
class Span:
    """The best answer of an example: its characters in the context and where the model found it."""

    start: int  # context[start:end] is the answer
    end: int
    window: int  # the window it was found in, and its start and end token there
    tokens: tuple[int, int]
    score: float  # start + end logit: comparable across the windows of one example


def best_span(logits: list[Any], offsets: list[list[Any]]) -> Span | None:
    """The highest-scoring valid span (start + end logit; context tokens only, at most `MAX_ANSWER_TOKENS`)
    over an example's windows; None when no window has one. `logits[i]` is window i's (T, 2) array."""
    best: Span | None = None
    for w, (lg, off) in enumerate(zip(logits, offsets, strict=True)):
        n = len(off)
        start_l, end_l = lg[:n, 0], lg[:n, 1]
        for s in np.argsort(start_l)[::-1][:N_BEST]:
            for e in np.argsort(end_l)[::-1][:N_BEST]:
                if off[s] is None or off[e] is None or e < s or e - s + 1 > MAX_ANSWER_TOKENS:
                    continue
                score = float(start_l[s] + end_l[e])
                if best is None or score > best.score:
                    best = Span(off[s][0], off[e][1], w, (int(s), int(e)), score)
    return best


def best_answer(logits: list[Any], offsets: list[list[Any]], context: str) -> str:
    """The text of `best_span` in `context` ("" when there is none)."""
    span = best_span(logits, offsets)
    return "" if span is None else context[span.start : span.end]


def span_probability(logits: Any, offsets: list[Any], tokens: tuple[int, int]) -> float:
    """P(start) * P(end) of a span in its window, each a softmax over the window's context tokens (the score
    transformers' question-answering pipeline reports)."""
    ctx = np.array([o is not None for o in offsets])[:, None]  # (T, 1)
    lg = np.where(ctx, np.asarray(logits[: len(offsets)], dtype=np.float64), -np.inf)  # (T, 2)
    probs = np.exp(lg - lg.max(0))
    probs /= probs.sum(0)
    return float(probs[tokens[0], 0] * probs[tokens[1], 1])


def normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


SPEC = TaskSpec(
    name=QuestionAnswering.name,
    task=QuestionAnswering,
    auto_class="AutoModelForQuestionAnswering",
    head=lambda shape, family, dropout: SpanHead(shape),
    head_weights=lambda family: [("head.qa_outputs", "qa_outputs")],
    endpoint="answer",
    warm_up=("warm?", "warm up"),
)
