"""Training cost: one once-for-all step (sandwich rule, in-place distillation) vs one plain fine-tuning step
of the same model on the same batch.

    python bench/train_cost.py --out bench/results/train_cost [--quick]

summary.step_ratio_per_size: OFA step time / (plain step time x sizes sampled per step). Sub-sizes run as
real prefix slices, so a sampled size costs less than a dense step: the target is <= 1.5.
"""

import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
from datasets import Dataset

sys.path.insert(0, str(Path(__file__).parent))
from common import base_parser, device_name, load_model, plt, sync, write_result  # noqa: E402

from dynsparse.config import SparsityArguments, TrainArguments  # noqa: E402
from dynsparse.sandwich import Batch  # noqa: E402
from dynsparse.tasks import SequenceClassification  # noqa: E402
from dynsparse.trainer import Trainer  # noqa: E402


def _timed(fn, device: str, steps: int) -> float:  # noqa: ANN001
    fn()  # warm-up
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _plain_step(trainer: Trainer, batch: Batch) -> None:
    """Plain fine-tuning: one dense forward/backward and an optimizer step, as in transformers' Trainer."""
    model = trainer.model
    model.train()
    with trainer.sizes.autocast():
        loss = trainer.task.loss(model(**batch.inputs).logits, batch.labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq_len", type=int, default=64)
    args = p.parse_args()
    model = load_model(args.model, args.device)
    g = torch.Generator().manual_seed(0)
    n = args.batch * 4
    ids = torch.randint(5, model.shape.vocab_size, (n, args.seq_len), generator=g)
    labels = torch.randint(0, model.shape.num_labels, (n,), generator=g).tolist()
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * args.seq_len] * n, "labels": labels})
    steps = 3 if args.quick else 10
    rows = []
    for sizes in [2, 4] if args.quick else [2, 3, 4, 6]:
        targs = TrainArguments(
            output_dir="/tmp/dynsparse-bench",
            max_steps=1000,
            device=args.device,
            per_device_train_batch_size=args.batch,
            mixed_precision="bf16" if args.device == "cuda" else "no",
        )
        task = SequenceClassification([str(i) for i in range(model.shape.num_labels)])
        trainer = Trainer(model, task, ds, None, targs, SparsityArguments(sizes_per_step=sizes, importance="natural"))
        plain_ms = _timed(partial(_plain_step, trainer, trainer._batch(0)), args.device, steps)
        ofa_ms = _timed(trainer._step, args.device, steps)
        rows.append(
            {
                "sizes_per_step": sizes,
                "plain_ms": round(plain_ms, 1),
                "ofa_ms": round(ofa_ms, 1),
                "ratio": round(ofa_ms / plain_ms, 3),
                "ratio_per_size": round(ofa_ms / plain_ms / sizes, 3),
            }
        )
        print(rows[-1])
    ref = next(r for r in rows if r["sizes_per_step"] == 4)
    summary = {
        "step_ratio_per_size": ref["ratio_per_size"],
        "step_ratio": ref["ratio"],
        "sizes_per_step": 4,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "device": device_name(args.device),
    }
    out = Path(args.out)
    write_result(out, "train_cost", {"summary": summary, "rows": rows, "quick": args.quick})
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6, 3.5), dpi=120)
    k = [r["sizes_per_step"] for r in rows]
    ax.plot(k, [r["ratio"] for r in rows], "o-", label="once-for-all step / plain step")
    ax.plot(k, [1.5 * x for x in k], "k--", label="target bound: 1.5 x sizes")
    ax.plot(k, k, ":", color="grey", label="sizes x plain (all dense)")
    ax.set_xlabel("sizes sampled per step")
    ax.set_ylabel("time relative to a plain step")
    ax.set_title(f"Training step cost, batch {args.batch} x {args.seq_len} ({summary['device']})", fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "train_cost.png")


if __name__ == "__main__":
    main()
