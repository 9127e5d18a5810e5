"""Per endpoint, what a request's items become for the model and what the model's output becomes for the client.

A codec encodes items into model rows, reduces each batch chunk's output to small per-row results (on the
device: one transfer per chunk) and decodes an item's rows into its answer; the engine batches the rows of
many requests in between. Items are plain strings and tuples (the schemas turn bodies into them):

    classify  a text, or a pair (a, b)  -> 1 row               -> (label id, probability)
    embed     a text, or a pair (a, b)  -> 1 row               -> unit vector (mean of the last hidden states)
    tokens    a text, or words (w, ...) -> 1 row               -> entities (BIO tags) or one tag per word
    answer    (question, context)       -> 1 row per window    -> the best span over the windows

Tokens and answers are tokenised exactly as training does (`dynsparse.tasks`): words split as the tokenizer
splits them and tagged by their first sub-word; contexts in overlapping windows with character offsets.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast, get_args

import torch.nn.functional as F
from torch import Tensor

from dynsparse.errors import InputError
from dynsparse.tasks import SPECS, predict_proba, task_spec
from dynsparse.tasks.qa import best_span, encode_windows, span_probability, window_stride
from dynsparse.tasks.tokens import first_subwords, group_entities, is_bio

Endpoint = Literal["classify", "embed", "tokens", "answer"]
Item = str | tuple[str, ...]  # a text; a text pair (classify, embed); words (tokens); (question, context) (answer)


class LabelScore(tuple[int, float]):
    """One classify output: unpacks as (label id, probability of that label); `probs` and `logits` hold every
    label's (TEI's /predict lists them all)."""

    probs: tuple[float, ...]
    logits: tuple[float, ...]

    def __new__(cls, label: int, score: float, probs: Sequence[float], logits: Sequence[float]) -> "LabelScore":
        self = super().__new__(cls, (label, score))
        self.probs, self.logits = tuple(probs), tuple(logits)
        return self


ENDPOINTS: tuple[Endpoint, ...] = get_args(Endpoint)


def endpoint_of(model_task: str) -> Endpoint:
    """The endpoint of a checkpoint's task (transformers' pipeline name), from the task's `TaskSpec`."""
    name = task_spec(model_task).endpoint
    if name not in ENDPOINTS:  # a task registered in the core without a codec here
        raise InputError(f"task {model_task!r} has no endpoint in this server (its spec names {name!r})")
    return cast(Endpoint, name)


def served_endpoints(model_task: str) -> tuple[Endpoint, ...]:
    """The endpoints a checkpoint serves: its task's, and embeddings (mean-pooled encoder states) from any."""
    main = endpoint_of(model_task)
    return (main,) if main == "embed" else (main, "embed")


def warm_up_item(endpoint: Endpoint) -> Item:
    """A small valid input of `endpoint`: the warm-up of the task that endpoint serves."""
    return next(s.warm_up for s in SPECS.values() if s.endpoint == endpoint)


@dataclass(frozen=True)
class Row:
    """One model input row: token ids (and segment ids for pairs)."""

    ids: list[int]
    types: list[int] | None = None


@dataclass(frozen=True)
class Encoded:
    """One item as model rows, with what decoding needs (`extra`; None for one-row tasks)."""

    rows: list[Row]
    extra: Any = None


@dataclass(frozen=True)
class EntitySpan:
    """A tagged span of a text: an entity (BIO tags) or one word (other tag sets)."""

    label: str
    score: float  # mean probability of its words' tags
    start: int  # text[start:end] is `word`
    end: int
    word: str


@dataclass(frozen=True)
class AnswerSpan:
    """The answer to a question: context[start:end] is `text` (empty when no window holds a valid span)."""

    text: str
    score: float  # P(start) * P(end) in the window it was found in
    start: int
    end: int


class Codec(Protocol):
    """What the engine needs to serve one endpoint."""

    uses_head: bool  # False: `reduce` gets the encoder's last hidden states, not the head's output

    def encode(self, items: Sequence[Item]) -> list[Encoded | InputError]: ...

    def reduce(self, out: Tensor, mask: Tensor) -> list[Any]: ...

    def decode(self, item: Encoded, outputs: list[Any]) -> Any: ...


def make_codecs(
    tasks: Sequence[Endpoint], tokenizer: Any, max_tokens: int, labels: list[str], window: int
) -> dict[Endpoint, Codec]:
    """The codecs of `tasks`; texts are tokenised up to one token past `max_tokens` (enough to reject them)."""
    codecs: dict[Endpoint, Codec] = {}
    for t in tasks:
        if t == "tokens":
            codecs[t] = TokensCodec(tokenizer, max_tokens, labels)
        elif t == "answer":
            codecs[t] = AnswerCodec(tokenizer, window)
        else:
            codecs[t] = TextCodec(tokenizer, max_tokens, pooled=t == "embed")
    return codecs


class TextCodec:
    """classify (the head's label probabilities) and embed (normalised mean of the last hidden states)."""

    def __init__(self, tokenizer: Any, max_tokens: int, pooled: bool) -> None:
        self.tokenizer, self.max_tokens, self.uses_head = tokenizer, max_tokens, not pooled

    def encode(self, items: Sequence[Item]) -> list[Encoded | InputError]:
        """Singles and pairs in one tokenizer call each (a call takes all-singles or all-pairs)."""
        out: list[Encoded | None] = [None] * len(items)
        singles = [i for i, x in enumerate(items) if isinstance(x, str)]
        pairs = [i for i, x in enumerate(items) if not isinstance(x, str)]
        # one token over the limit is enough to reject a text: never tokenize a huge one whole
        limit: dict[str, Any] = {"truncation": True, "max_length": self.max_tokens + 1}
        if singles:
            enc = self.tokenizer([items[i] for i in singles], **limit)
            for k, i in enumerate(singles):
                out[i] = Encoded([Row(enc["input_ids"][k])])
        if pairs:
            enc = self.tokenizer([items[i][0] for i in pairs], [items[i][1] for i in pairs], **limit)
            types = enc.get("token_type_ids")
            for k, i in enumerate(pairs):
                out[i] = Encoded([Row(enc["input_ids"][k], types[k] if types is not None else None)])
        return [e for e in out if e is not None]

    def reduce(self, out: Tensor, mask: Tensor) -> list[Any]:
        if self.uses_head:  # (B, C) label logits
            label, score = predict_proba(out)  # (B,), (B,)
            logits = out.float()  # (B, C)
            rows = zip(label.tolist(), score.tolist(), logits.softmax(-1).tolist(), logits.tolist(), strict=True)
            return [LabelScore(*row) for row in rows]
        hidden = out.float()  # (B, T, H)
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1): mean over real tokens only
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, H)
        return F.normalize(pooled, dim=-1).cpu().tolist()

    def decode(self, item: Encoded, outputs: list[Any]) -> Any:
        return outputs[0]


class TokensCodec:
    """Tags per word (the first sub-word's), grouped into entities for BIO tag sets."""

    uses_head = True

    def __init__(self, tokenizer: Any, max_tokens: int, labels: list[str]) -> None:
        self.tokenizer, self.max_tokens, self.labels, self.bio = tokenizer, max_tokens, labels, is_bio(labels)

    def encode(self, items: Sequence[Item]) -> list[Encoded | InputError]:
        split = [_words(self.tokenizer, x) for x in items]  # (text, words, character spans) per item
        out: list[Encoded | InputError] = [InputError("has no words to tag") for _ in items]
        some = [i for i, (_, words, _) in enumerate(split) if words]
        if some:
            limit: dict[str, Any] = {"truncation": True, "max_length": self.max_tokens + 1}
            enc = self.tokenizer([split[i][1] for i in some], is_split_into_words=True, **limit)
            for k, i in enumerate(some):
                text, words, spans = split[i]
                firsts = first_subwords(enc.word_ids(k), len(words))
                out[i] = Encoded([Row(enc["input_ids"][k])], (text, spans, firsts))
        return out

    def reduce(self, out: Tensor, mask: Tensor) -> list[Any]:
        logp = out.float().log_softmax(-1)  # (B, T, C); kept per row for shadow agreement (KL to dense)
        score, label = logp.max(-1)  # (B, T) each
        lengths = mask.sum(1).tolist()
        labels, scores, logp = label.cpu().tolist(), score.exp().cpu().tolist(), logp.cpu()
        return [(labels[i][:n], scores[i][:n], logp[i, :n]) for i, n in enumerate(lengths)]

    def decode(self, item: Encoded, outputs: list[Any]) -> list[EntitySpan]:
        text, spans, firsts = item.extra
        labels, scores = outputs[0][:2]  # (the third: the tags' log-probabilities, for agreement)
        tagged = [w for w, t in enumerate(firsts) if t is not None]  # a word the tokenizer dropped has no tag
        tags = [self.labels[labels[firsts[w]]] for w in tagged]
        probs = [scores[firsts[w]] for w in tagged]
        if self.bio:
            groups = [(kind, p, tagged[a], tagged[b]) for kind, p, a, b in group_entities(tags, probs)]
        else:
            groups = [(tag, p, w, w) for tag, p, w in zip(tags, probs, tagged, strict=True)]
        found = []
        for label, p, first, last in groups:
            start, end = spans[first][0], spans[last][1]
            found.append(EntitySpan(label, p, start, end, text[start:end]))
        return found


def _words(tokenizer: Any, item: Item) -> tuple[str, list[str], list[tuple[int, int]]]:
    """(text, words, each word's characters in text). Given words are joined by spaces, as transformers'
    pipeline does; a text is split where the tokenizer's pre-tokenizer splits it (whitespace, punctuation)."""
    if not isinstance(item, str):
        words, spans, at = list(item), [], 0
        for w in words:
            spans.append((at, at + len(w)))
            at += len(w) + 1
        return " ".join(words), words, spans
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None)
    pieces = pre.pre_tokenize_str(item) if pre is not None else [(m[0], m.span()) for m in re.finditer(r"\S+", item)]
    spans = []
    for _, (start, end) in pieces:  # byte-level and sentencepiece pieces carry their leading space: drop it
        piece = item[start:end]
        lead = len(piece) - len(piece.lstrip())
        if piece.strip():
            spans.append((start + lead, start + len(piece.rstrip())))
    return item, [item[a:b] for a, b in spans], spans


class AnswerCodec:
    """The best span of the context over its windows (the training code's windows and span search)."""

    uses_head = True

    def __init__(self, tokenizer: Any, window: int) -> None:
        self.tokenizer, self.window = tokenizer, window
        # a question may fill the window up to where consecutive windows would advance by less than the stride
        specials = tokenizer.num_special_tokens_to_add(pair=True)
        self.max_question = max(1, window - specials - 2 * window_stride(window))

    def encode(self, items: Sequence[Item]) -> list[Encoded | InputError]:
        questions = [x[0].lstrip() for x in items]
        lengths = [len(ids) for ids in self.tokenizer(questions, add_special_tokens=False)["input_ids"]]
        out: list[Encoded | InputError] = [
            InputError(f"has a question of {n} tokens; at most {self.max_question} fit a window of {self.window}")
            for n in lengths
        ]
        fit = [i for i, n in enumerate(lengths) if n <= self.max_question]
        if not fit:
            return out
        w = encode_windows(self.tokenizer, [questions[i] for i in fit], [items[i][1] for i in fit], self.window)
        types = w.encoding.get("token_type_ids")
        windows: dict[int, list[int]] = {}
        for k, j in enumerate(w.sample):
            windows.setdefault(j, []).append(k)
        for j, i in enumerate(fit):
            ks = windows[j]
            rows = [Row(w.encoding["input_ids"][k], types[k] if types is not None else None) for k in ks]
            out[i] = Encoded(rows, (items[i][1], [w.offsets[k] for k in ks]))
        return out

    def reduce(self, out: Tensor, mask: Tensor) -> list[Any]:
        logits = out.float().cpu().numpy()  # (B, T, 2) start and end logits
        return [logits[i, :n] for i, n in enumerate(mask.sum(1).tolist())]

    def decode(self, item: Encoded, outputs: list[Any]) -> AnswerSpan:
        context, offsets = item.extra
        span = best_span(outputs, offsets)
        if span is None:
            return AnswerSpan("", 0.0, 0, 0)
        score = span_probability(outputs[span.window], offsets[span.window], span.tokens)
        return AnswerSpan(context[span.start : span.end], score, span.start, span.end)
