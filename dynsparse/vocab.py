"""Vocabulary pruning: keep the tokens a corpus uses (TextPruner's vocabulary pruning).

In XLM-R-style models the word embeddings are most of the parameters (multilingual-e5-small: 96M of
118M) but almost none of the compute: width pruning makes the model fast, only this makes it small.
The tokenizer is left as it is; a map from tokenizer ids to kept rows sends every dropped token to the
unknown token's row, so text outside the corpus still runs (as unknown words).

Example:
    >>> model = dynsparse.load("runs/xnli")
    >>> keep = used_tokens(model.tokenizer, ["a corpus", "of the texts to serve"])
    >>> prune_vocabulary(model, keep); dynsparse.save(model, "runs/xnli-de")
"""

from collections.abc import Iterable
from dataclasses import replace

import torch

from dynsparse.errors import InputError
from dynsparse.metadata import Vocabulary
from dynsparse.modeling import ElasticModel


def used_tokens(tokenizer: object, texts: Iterable[str | list[str]], batch: int = 1000) -> set[int]:
    """Token ids the tokenizer gives for `texts` (strings, or word lists), plus all special tokens."""
    keep = set(getattr(tokenizer, "all_special_ids", []))
    chunk: list[str | list[str]] = []

    def flush() -> None:
        words = [t for t in chunk if isinstance(t, list)]
        plain = [t for t in chunk if isinstance(t, str)]
        # verbose=False: counting tokens of long texts is fine, transformers' "longer than the maximum" warning is not
        for ids in tokenizer(plain, verbose=False)["input_ids"] if plain else []:  # type: ignore[operator]
            keep.update(ids)
        split = tokenizer(words, is_split_into_words=True, verbose=False) if words else {"input_ids": []}  # type: ignore[operator]
        for ids in split["input_ids"]:
            keep.update(ids)
        chunk.clear()

    for text in texts:
        chunk.append(text)
        if len(chunk) >= batch:
            flush()
    flush()
    return keep


@torch.no_grad()
def prune_vocabulary(model: ElasticModel, keep: set[int]) -> dict[str, int]:
    """Shrink `model`'s word embeddings to the tokenizer ids in `keep` (in place); returns the counts."""
    old = model.embeddings
    original = model.shape.vocab_size
    unk = getattr(model.tokenizer, "unk_token_id", None)
    if unk is None:
        raise InputError("vocabulary pruning needs a tokenizer with an unknown token (dropped tokens map to it)")
    device = old.word.weight.device
    prior = old.vocab_map if old.vocab_map is not None else torch.arange(original, device=device)
    ids = sorted(i for i in keep | {unk} if 0 <= i < original)
    index = torch.tensor(ids, device=device)
    rows = old.word.weight[prior[index]].clone()  # (kept, E): rows of the current matrix
    new_map = torch.full((original,), ids.index(unk), dtype=torch.long, device=device)
    new_map[index] = torch.arange(len(ids), device=device)
    old.word = torch.nn.Embedding.from_pretrained(rows, freeze=False)
    old.vocab_map = new_map  # a buffer: saved with the weights
    counts = {"original": original, "kept": len(ids)}
    model.meta = replace(model.meta, vocabulary=Vocabulary(original, len(ids)))
    return counts
