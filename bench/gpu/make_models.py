"""Models for the GPU benchmarks on a machine that cannot reach a hub or install the asset packages.

Random-weight classifiers of MiniLM-L6's shape (the CPU results' model) and BERT-base's, with the embedded
MiniLM's real WordPiece tokenizer (carried as files), and a labelled CSV of review-like snippets: what
`train.py` needs for a few steps that turn each into a dynsparse checkpoint. Speed does not depend on the
weights' values, so the latency, training-cost and serving benchmarks measure what they would on trained ones.

    python bench/gpu/make_models.py --tokenizer .whl/tokenizer --out /tmp/gpu
"""

import argparse
import csv
import random
from pathlib import Path

from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

SHAPES = {  # hidden, layers, heads, intermediate
    "minilm": (384, 6, 12, 1536),
    "bert-base": (768, 12, 12, 3072),
}
WORDS = (
    "a gripping funny film with a terrible script and wonderful actors that never quite lands its dull "
    "predictable ending but the score is moving"
).split()


def make_model(name: str, tokenizer_dir: Path, out: Path) -> Path:
    hidden, layers, heads, inner = SHAPES[name]
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inner,
        num_labels=2,
    )
    path = out / name
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_data(out: Path, n: int = 512) -> Path:
    rng = random.Random(0)
    path = out / "reviews.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for _ in range(n):
            w.writerow([" ".join(rng.choices(WORDS, k=rng.randrange(8, 40))), rng.randrange(2)])
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", required=True, help="a folder with tokenizer.json and tokenizer_config.json")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in SHAPES:
        print(make_model(name, Path(args.tokenizer), out))
    print(make_data(out))


if __name__ == "__main__":
    main()
