"""The offline twin of the server's shadow agreement: every level against the dense level on a file of texts, no
labels needed, so an operator can price the sizes on a sample of their own traffic before deploying.

Per level (columns of `levels.json`, the same measures as `service.shadow`, from `dynsparse.agreement`):

    agreement_label    classification: share of texts whose predicted label is the dense label
    agreement_top1     token classification: share of words (first sub-words) whose tag is the dense tag
    agreement_kl       token classification: mean KL(dense || level) per word, in nats
    agreement_span     question answering on (question, context) pairs: share of questions whose best answer span
                       (over the context's windows, as the server decodes it) is the dense one
    agreement_cosine   every checkpoint: mean cosine of the mean-pooled embedding to the dense one
    agreement          the checkpoint task's main one (label, top1, span; cosine for embeddings, and for question
                       answering on a file of single texts, which have no context to find a span in)

Example:
    >>> rows = agreement_levels(model, ["a text", "another"], [0.0, 0.5, 0.9])
    >>> rows[0.9]["agreement"]
    0.83
"""

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from dynsparse.agreement import cosine_to_dense, label_agreement, span_agreement, token_agreement
from dynsparse.modeling import ElasticModel
from dynsparse.tasks.qa import best_span, encode_windows

Text = str | tuple[str, str] | list[str]  # a text, a text pair, or (token classification) a list of words
MAIN = {
    "text-classification": "agreement_label",
    "token-classification": "agreement_top1",
    "question-answering": "agreement_span",
}


@torch.inference_mode()
def agreement_levels(
    model: ElasticModel,
    texts: Sequence[Text],
    levels: Sequence[float],
    batch_size: int = 64,
    max_len: int = 128,
    depth: int | None = None,
    progress: bool = False,
) -> dict[float, dict[str, float]]:
    """Per level, its mean agreement with the dense level (sparsity 0, every layer) over `texts`."""
    device = next(model.parameters()).device
    sums: dict[float, dict[str, float]] = {s: {} for s in levels}
    counts: dict[str, float] = {}
    order = sorted(range(len(texts)), key=lambda i: len(str(texts[i])))  # similar lengths: little padding
    chunks = [[texts[i] for i in order[k : k + batch_size]] for k in range(0, len(order), batch_size)]
    for chunk in tqdm(chunks, desc=f"agreement of {len(levels)} levels", disable=not progress, unit="batch"):
        batch, words = _encode(model, chunk, max_len)
        batch = {k: v.to(device) for k, v in batch.items()}
        dense = model(**batch, sparsity=0.0, unpad=True)
        for s in levels:
            out = model(**batch, sparsity=s, depth=depth, unpad=True)
            for measure, values, weight in _measures(model.task, out, dense, batch["attention_mask"], words):
                sums[s][measure] = sums[s].get(measure, 0.0) + float((values * weight).sum())
                if s == levels[0]:
                    counts[measure] = counts.get(measure, 0.0) + float(weight.sum())
        if model.task == "question-answering" and all(isinstance(t, tuple) for t in chunk):
            for s, agree in _span_agreement(model, chunk, levels, max_len, depth).items():
                sums[s]["agreement_span"] = sums[s].get("agreement_span", 0.0) + float(agree.sum())
            counts["agreement_span"] = counts.get("agreement_span", 0.0) + len(chunk)
    rows = {}
    for s in levels:
        row = {m: round(v / max(counts[m], 1e-9), 4) for m, v in sums[s].items()}
        main = MAIN.get(model.task, "agreement_cosine")
        rows[s] = {"agreement": row.get(main, row["agreement_cosine"]), **row}
    return rows


def _span_agreement(
    model: ElasticModel, pairs: Sequence[Any], levels: Sequence[float], max_len: int, depth: int | None
) -> dict[float, Tensor]:
    """Per level, (N,) 1.0 where a (question, context) pair's best span is the dense one's. Contexts are cut in
    overlapping windows and the best span taken over them, as training's metric and the server's /v1/answer do."""
    w = encode_windows(model.tokenizer, [q for q, _ in pairs], [c for _, c in pairs], max_len)
    encoded, size = dict(w.encoding), len(pairs)  # long contexts give many windows: at most `size` per forward
    slices = [
        _padded(model, {k: v[lo : lo + size] for k, v in encoded.items()}) for lo in range(0, len(w.sample), size)
    ]
    windows: list[list[int]] = [[] for _ in pairs]
    for i, j in enumerate(w.sample):
        windows[j].append(i)

    def spans(sparsity: float, at_depth: int | None) -> Tensor:
        logits = [
            row
            for batch in slices
            for row in model(**batch, sparsity=sparsity, depth=at_depth, unpad=True).logits.float().cpu().numpy()
        ]
        found = [best_span([logits[i] for i in rows], [w.offsets[i] for i in rows]) for rows in windows]
        return torch.tensor([(-1, -1) if f is None else (f.start, f.end) for f in found])  # (N, 2) characters

    dense = spans(0.0, None)
    return {s: span_agreement(spans(s, depth), dense) for s in levels}


def _padded(model: ElasticModel, rows: dict[str, Any]) -> dict[str, Tensor]:
    """Token rows as one padded batch on the model's device."""
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in model.tokenizer.pad(rows, return_tensors="pt").items()}


def _encode(model: ElasticModel, texts: Sequence[Text], max_len: int) -> tuple[dict[str, Tensor], Tensor | None]:
    """A padded batch and, for token classification, the (B, T) mask of each word's first sub-word."""
    tok = model.tokenizer
    limit: dict[str, Any] = {"truncation": True, "max_length": max_len, "padding": True, "return_tensors": "pt"}
    if model.task == "token-classification":
        words = [t if isinstance(t, list) else str(t).split() for t in texts]
        enc = tok(words, is_split_into_words=True, **limit)
        first = torch.zeros_like(enc["input_ids"], dtype=torch.bool)  # (B, T)
        for i in range(len(words)):
            seen = set()
            for t, w in enumerate(enc.word_ids(i)):
                if w is not None and w not in seen:
                    seen.add(w)
                    first[i, t] = True
        return dict(enc), first
    if all(isinstance(t, tuple) for t in texts):
        enc = tok([t[0] for t in texts], [t[1] for t in texts], **limit)
    else:
        enc = tok([str(t) for t in texts], **limit)
    return dict(enc), None


def _measures(task: str, out: Any, dense: Any, mask: Tensor, words: Tensor | None) -> list[tuple[str, Tensor, Tensor]]:
    """(measure, per-input values, per-input weight) for one batch: weights count texts, or words for tags."""
    ones = torch.ones(mask.shape[0])
    cosine = cosine_to_dense(_pool(out.last_hidden_state, mask), _pool(dense.last_hidden_state, mask))
    found = [("agreement_cosine", cosine.cpu(), ones)]
    if task == "text-classification":
        found.append(("agreement_label", label_agreement(out.logits.argmax(-1), dense.logits.argmax(-1)).cpu(), ones))
    elif task == "token-classification" and words is not None:
        kl, top1 = token_agreement(out.logits.float().log_softmax(-1), dense.logits.float().log_softmax(-1), words)
        n = words.sum(-1).float().cpu()  # words per text: the mean is over words, not texts
        found += [("agreement_kl", kl.cpu(), n), ("agreement_top1", top1.cpu(), n)]
    return found


def _pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean over real tokens, as the server's /v1/embed (B, H)."""
    w = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return F.normalize((hidden.float() * w).sum(1) / w.sum(1).clamp(min=1.0), dim=-1)


_TEXTS = ("text", "sentence", "sentence1", "tokens", "words", "question", "query", "content", "body")
_PAIRS = ("text_pair", "sentence2", "context", "passage")  # a second text: a pair, or a question's context


def twin_texts(raw: Any, task: Any, args: Any) -> tuple[list[Text], bool]:
    """(the texts to compare levels on, whether `raw` is labelled for `task`). Labelled data gives its task's text
    columns (pairs for classification and QA); any other file its text column: `args.text_column`, a usual name,
    or the first column of strings (or word lists), paired with `args.text_pair_column` (the checkpoint's own pair
    column by default) or, for questions, a usual context column. No text column at all is an `InputError`."""
    from dynsparse.errors import InputError

    try:
        cols = task.columns(raw, args)
        text, pair, labelled = cols.text, cols.pair if task.name != "feature-extraction" else None, True
    except InputError:
        names = raw.column_names
        given = args.text_column if args.text_column in names else None
        usual = next((c for c in _TEXTS if c in names), None)
        text, labelled = given or usual or next(iter(_string_columns(raw)), None), False
        pair_given = args.text_pair_column if getattr(args, "text_pair_column", None) in names else None
        guessed = (
            next((c for c in _PAIRS if c in names and c != text), None) if task.name == "question-answering" else None
        )
        pair = (pair_given or guessed) if task.name in ("text-classification", "question-answering") else None
        if text is None:
            raise InputError(
                f"no text column found (looked for {', '.join(_TEXTS)}); pass --text_column, columns: {names}"
            ) from None
    first = raw[text]
    second = raw[pair] if pair is not None else [None] * len(first)
    texts: list[Text] = []
    for a, b in zip(first, second, strict=True):
        if isinstance(a, list) and a and all(isinstance(w, str) for w in a):
            texts.append([str(w) for w in a])
        elif isinstance(a, str) and a.strip():
            texts.append((a, b) if isinstance(b, str) and b.strip() else a)
    if not texts:
        raise InputError(f"column {text!r} holds no texts")
    return texts, labelled


def _string_columns(raw: Any) -> list[str]:
    row = raw[0]
    return [c for c, v in row.items() if isinstance(v, str) or (isinstance(v, list) and v and isinstance(v[0], str))]


def add_agreement(
    rows: list[dict[str, Any]],
    model: ElasticModel,
    texts: Sequence[Text],
    batch_size: int,
    max_len: int,
    progress: bool = True,
) -> None:
    """Add the agreement columns to the level table's `rows` (each depth's rows against the dense level)."""
    depths: list[int | None] = [*sorted({int(r["depth"]) for r in rows if r.get("depth") is not None}, reverse=True)]
    for depth in depths or [None]:
        mine = [r for r in rows if r.get("depth") == depth]
        found = agreement_levels(
            model, texts, [r["sparsity"] for r in mine], batch_size, max_len, model.check_depth(depth), progress
        )
        for r in mine:
            r.update(found[r["sparsity"]])
