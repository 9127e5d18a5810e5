"""Reduced precision per level: quality against float32 and speed, from one checkpoint cast once.

For each dtype (bfloat16, float16) and level: the task metric (accuracy on the checkpoint's validation data:
the embedded default's Rotten Tomatoes split), agreement of the predicted labels with float32, the minimum cosine
of the mean-pooled encoder output to float32's, and the median ms per batch of 8 x 128 against float32 in the
same interleaved rounds. On a CPU without bf16/fp16 instructions (e.g. AVX2-only) the reduced types are emulated
and slower; `auto` (`dynsparse.precision`) then keeps float32. With `--compile`, also torch.compile per size
(one compiled graph per structure) against eager, float32, at two shapes.

    python bench/precision.py --model runs/default --out bench/results/cpu/precision [--quick] [--compile]

summary.max_accuracy_drop: the largest float32 - reduced accuracy over levels and dtypes (points).
summary.min_agreement: the lowest label agreement with float32.
"""

import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import base_parser, device_name, load_model, plt, write_result  # noqa: E402

from dynsparse.modeling import ElasticModel  # noqa: E402
from dynsparse.precision import accelerated_dtypes, cast_model, pick_dtype  # noqa: E402


def validation(model: ElasticModel, n: int) -> tuple[list[str], list[int] | None]:
    """Up to `n` validation texts and label ids (None for a model without a trained label set)."""
    import csv

    from dynsparse.assets.default import prepare_rotten_tomatoes
    from dynsparse.recipe import cache_dir

    _, valid = prepare_rotten_tomatoes(cache_dir() / "rotten_tomatoes")
    with open(valid, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:n]
    labels = [str(x) for x in model.meta.labels or ()]
    if sorted(labels) != ["fresh", "rotten"]:
        return [r["text"] for r in rows], None  # not trained on this data: agreement and cosine only
    return [r["text"] for r in rows], [labels.index(r["label"]) for r in rows]


@torch.inference_mode()
def outputs(model: ElasticModel, texts: list[str], s: float, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels (N,), mean-pooled encoder output (N, H)) at sparsity `s`, unpadded forward as the server runs it."""
    preds, pooled = [], []
    for lo in range(0, len(texts), batch):
        enc = model.tokenizer(texts[lo : lo + batch], padding=True, truncation=True, max_length=64, return_tensors="pt")
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], sparsity=s, unpad=True)
        m = enc["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
        preds.append(out.logits.float().argmax(-1))
        pooled.append((out.last_hidden_state.float() * m).sum(1) / m.sum(1))
    return torch.cat(preds), torch.cat(pooled)


@torch.inference_mode()
def interleaved_ms(fns: dict[str, Any], rounds: int) -> dict[str, float]:
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1000)
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


def quality_rows(
    model: ElasticModel,
    dtypes: list[torch.dtype],
    levels: list[float],
    texts: list[str],
    labels: list[int] | None,
    rounds: int,
) -> list[dict[str, Any]]:
    low = {d: cast_model(copy.deepcopy(model), d) for d in dtypes}  # one cast each: every size stays a view
    ids = torch.randint(5, model.shape.vocab_size, (8, 128))
    mask = torch.ones_like(ids)
    rows = []
    for s in levels:
        ref_pred, ref_pooled = outputs(model, texts, s)
        fns = {"float32": lambda s=s: model(input_ids=ids, attention_mask=mask, sparsity=s)}
        fns |= {_name(d): lambda s=s, m=m: m(input_ids=ids, attention_mask=mask, sparsity=s) for d, m in low.items()}
        ms = interleaved_ms(fns, rounds)
        for d, m in low.items():
            pred, pooled = outputs(m, texts, s)
            row = {
                "sparsity": s,
                "dtype": _name(d),
                "agreement": round(float((pred == ref_pred).float().mean()), 4),
                "min_cosine": round(float(torch.nn.functional.cosine_similarity(pooled, ref_pooled).min()), 5),
                "ms_8x128": ms[_name(d)],
                "float32_ms_8x128": ms["float32"],
                "speedup": round(ms["float32"] / ms[_name(d)], 3),
            }
            if labels is not None:
                y = torch.tensor(labels)
                row["accuracy"] = round(float((pred == y).float().mean()), 4)
                row["float32_accuracy"] = round(float((ref_pred == y).float().mean()), 4)
            print(row, flush=True)
            rows.append(row)
    return rows


def compile_rows(
    model: ElasticModel, levels: list[float], shapes: list[tuple[int, int]], rounds: int
) -> list[dict[str, Any]]:
    """torch.compile per size against eager: one compiled callable per level (its structure is a constant)."""
    rows = []
    for s in levels:
        st = model.structure(s)
        compiled = torch.compile(
            lambda i, m, st=st: model(input_ids=i, attention_mask=m, structure=st).logits, dynamic=False
        )
        for b, t in shapes:
            ids = torch.randint(5, model.shape.vocab_size, (b, t))
            mask = torch.ones_like(ids)
            t0 = time.perf_counter()
            compiled(ids, mask)
            first = (time.perf_counter() - t0) * 1000
            eager = lambda i=ids, m=mask, st=st: model(input_ids=i, attention_mask=m, structure=st)  # noqa: E731
            ms = interleaved_ms({"eager": eager, "compiled": lambda i=ids, m=mask, c=compiled: c(i, m)}, rounds)
            row = {
                "sparsity": s,
                "batch": b,
                "seq_len": t,
                "eager_ms": ms["eager"],
                "compiled_ms": ms["compiled"],
                "speedup": round(ms["eager"] / ms["compiled"], 3),
                "compile_ms": round(first),
            }
            print(row, flush=True)
            rows.append(row)
    return rows


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def plot(rows: list[dict[str, Any]], out: Path, title: str) -> None:
    pyplot = plt()
    fig, (a1, a2) = pyplot.subplots(1, 2, figsize=(10, 4), dpi=120)
    for d in sorted({r["dtype"] for r in rows}):
        sel = [r for r in rows if r["dtype"] == d]
        x = [r["sparsity"] for r in sel]
        a1.plot(x, [r["agreement"] for r in sel], "o-", label=f"{d}: label agreement with float32")
        if "accuracy" in sel[0]:
            a1.plot(x, [r["accuracy"] for r in sel], "s--", label=f"{d}: accuracy")
        a2.plot(x, [r["speedup"] for r in sel], "o-", label=d)
    if rows and "float32_accuracy" in rows[0]:
        sel = [r for r in rows if r["dtype"] == rows[0]["dtype"]]
        a1.plot([r["sparsity"] for r in sel], [r["float32_accuracy"] for r in sel], "k:", label="float32: accuracy")
    a2.axhline(1.0, color="grey", lw=0.8)
    a2.set_ylabel("speedup over float32, 8 x 128")
    for ax in (a1, a2):
        ax.set_xlabel("sparsity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "precision.png")


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--compile", action="store_true", help="also torch.compile per size against eager")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = load_model(args.model, args.device)
    dtypes = [torch.bfloat16, torch.float16]
    levels = [0.0, 0.5, 0.9] if args.quick else [round(i / 10, 1) for i in range(10)]
    texts, labels = validation(model, 128 if args.quick else 1000)
    rows = quality_rows(model, dtypes, levels, texts, labels, 3 if args.quick else 9)
    compiled = compile_rows(model, [0.0, 0.5], [(1, 16), (8, 128)], 5 if args.quick else 15) if args.compile else []
    drops = [r["float32_accuracy"] - r["accuracy"] for r in rows if "accuracy" in r]
    summary = {
        "auto_dtype": _name(pick_dtype("auto", device)),
        "accelerated": [_name(d) for d in accelerated_dtypes(device)],
        "max_accuracy_drop": round(100 * max(drops), 2) if drops else None,
        "min_agreement": min(r["agreement"] for r in rows),
        "min_cosine": min(r["min_cosine"] for r in rows),
        "speedup_at_0": {r["dtype"]: r["speedup"] for r in rows if r["sparsity"] == 0.0},
        "compile_speedup": {f"{r['batch']}x{r['seq_len']}@{r['sparsity']}": r["speedup"] for r in compiled},
        "device": device_name(args.device),
        "examples": len(texts),
    }
    out = Path(args.out)
    write_result(out, "precision", {"summary": summary, "rows": rows, "compile": compiled, "quick": args.quick})
    plot(rows, out, f"reduced precision vs float32 on {summary['device']} ({len(texts)} validation texts)")


if __name__ == "__main__":
    main()
