"""Accuracy per level on the embedded real model and data: dynsparse (one once-for-all run) vs
(a) plain dense fine-tuning and (b) a model pruned to each size first (magnitude importance, the simplest
usual one) and then fine-tuned at that size, each with the same step budget.

    python bench/accuracy.py --out bench/results/accuracy [--quick] [--checkpoint runs/default]

--checkpoint reuses a finished dynsparse run with the same budget (e.g. `python train.py`'s runs/default);
without it the once-for-all run is trained here with the same flags as the baselines.
summary.dense_minus_finetune: dynsparse dense accuracy - plain fine-tuning accuracy (points).
summary.min_margin_vs_pruned: worst level of (dynsparse - pruned-then-fine-tuned) accuracy (points).
"""

import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).parent))
from common import base_parser, device_name, plt, write_result  # noqa: E402

import dynsparse  # noqa: E402
from dynsparse.assets.default import DEFAULT_FLAGS  # noqa: E402
from dynsparse.config import DataArguments, ModelArguments, SparsityArguments, TrainArguments  # noqa: E402
from dynsparse.evaluate import predict_levels  # noqa: E402
from dynsparse.importance import magnitude_scores  # noqa: E402
from dynsparse.modeling import ElasticModel  # noqa: E402
from dynsparse.recipe import resolve_defaults, run_training, setup  # noqa: E402
from dynsparse.rewire import rewire  # noqa: E402
from dynsparse.schedule import batch_indices  # noqa: E402
from dynsparse.tasks import SequenceClassification  # noqa: E402

PRUNED_LEVELS = (0.25, 0.5, 0.75)


def finetune_at(model: ElasticModel, sparsity: float, train_ds: object, steps: int, lr: float, batch: int) -> None:
    """Fine-tune one fixed size (prefix slices of the rewired model), AdamW with warm-up and linear decay."""
    from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup

    collate = DataCollatorWithPadding(model.tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = get_linear_schedule_with_warmup(opt, round(0.06 * steps), steps)
    model.train()
    for step in tqdm(range(steps), desc=f"fine-tune at {sparsity}", leave=False):
        idx = batch_indices(step, 42, len(train_ds), batch)  # type: ignore[arg-type]
        feats = collate([train_ds[int(i)] for i in idx])  # type: ignore[index]
        labels = feats.pop("labels")
        loss = torch.nn.functional.cross_entropy(model(**feats, sparsity=sparsity).logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)


def accuracy_at(model: ElasticModel, eval_ds: object, levels: list[float]) -> dict[float, float]:
    task = SequenceClassification(list(model.meta.labels))
    preds = predict_levels(model.eval(), task, eval_ds, levels, 64, progress=False)
    return {s: round(100 * task.metrics(preds[s], eval_ds)["accuracy"], 2) for s in levels}


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="a finished dynsparse run with the same step budget")
    args = p.parse_args()
    steps = 20 if args.quick else int(DEFAULT_FLAGS["max_steps"])
    lr, batch = float(DEFAULT_FLAGS["learning_rate"]), int(DEFAULT_FLAGS["per_device_train_batch_size"])
    m, d = resolve_defaults(
        ModelArguments(), DataArguments(max_seq_length=64, max_eval_samples=200 if args.quick else None)
    )
    s = setup(m, d, SparsityArguments())
    levels = [round(i / 10, 1) for i in range(10)]
    out = Path(args.out)
    if args.checkpoint:
        ofa_model = dynsparse.load(args.checkpoint, device=args.device)
    else:
        ckpt = run_training(
            m,
            d,
            SparsityArguments(),
            TrainArguments(
                output_dir=str(out / "ofa-run"),
                max_steps=steps,
                learning_rate=lr,
                per_device_train_batch_size=batch,
                overwrite_output_dir=True,
                device=args.device,
            ),
        )
        ofa_model = dynsparse.load(str(ckpt), device=args.device)
    ofa = accuracy_at(ofa_model, s.eval_ds, sorted({*levels, *PRUNED_LEVELS}))
    baselines: dict[float, float] = {}
    for sparsity in (0.0, *PRUNED_LEVELS):
        torch.manual_seed(42)
        model = dynsparse.from_pretrained(str(m.model_name_or_path), labels=list(s.model.meta.labels)).to(args.device)
        rewire(model, *magnitude_scores(model))  # prune the usual way: keep the largest-norm units
        finetune_at(model, sparsity, s.train_ds, steps, lr, batch)
        baselines[sparsity] = accuracy_at(model, s.eval_ds, [sparsity])[sparsity]
        print(f"fine-tuned at {sparsity}: {baselines[sparsity]}  dynsparse: {ofa[sparsity]}", flush=True)
    margins = {x: round(ofa[x] - baselines[x], 2) for x in PRUNED_LEVELS}
    summary = {
        "dense_minus_finetune": round(ofa[0.0] - baselines[0.0], 2),
        "min_margin_vs_pruned": min(margins.values()),
        "margins": margins,
        "steps_each": steps,
        "device": device_name(args.device),
        "eval_examples": len(s.eval_ds),
    }
    doc = {"summary": summary, "dynsparse": ofa, "finetuned": baselines, "quick": args.quick}
    write_result(out, "accuracy", json.loads(json.dumps(doc)))
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(levels, [ofa[x] for x in levels], "o-", label="dynsparse: one once-for-all run")
    ax.plot(list(baselines), list(baselines.values()), "s", ms=9, label="pruned (magnitude) + fine-tuned, one run each")
    ax.axhline(baselines[0.0], color="grey", ls=":", label="plain dense fine-tuning")
    ax.set_xlabel("sparsity")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"MiniLM-L6 on Rotten Tomatoes, {steps} steps each ({summary['device']})", fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png")


if __name__ == "__main__":
    main()
