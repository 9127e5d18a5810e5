"""Latency per level: dynsparse prefix slices vs the FLOP-ideal, vs the same model physically pruned the usual
way (transformers model with `prune_linear_layer`), and vs masking (full-size matmuls with zeroed units).

    python bench/latency.py --out bench/results/latency [--quick] [--device cuda]

summary.fraction_of_ideal: measured / FLOP-ideal speedup at sparsity 0.5, batch 8, length 128.
"""

import sys
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm
from transformers.pytorch_utils import prune_linear_layer

sys.path.insert(0, str(Path(__file__).parent))
from common import base_parser, device_name, load_model, paired_ms, plt, write_result  # noqa: E402

from dynsparse.cost import flops  # noqa: E402
from dynsparse.masks import Structure, prefix_masks  # noqa: E402
from dynsparse.modeling import ElasticModel  # noqa: E402


def pruned_copy(model: ElasticModel, structure: Structure) -> torch.nn.Module:
    """The usual way: a transformers BertModel with each layer's heads/neurons physically removed."""
    from transformers import BertConfig, BertModel

    s = model.shape
    cfg = BertConfig(
        vocab_size=s.vocab_size,
        hidden_size=s.hidden,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        intermediate_size=s.intermediate,
        max_position_embeddings=s.max_positions,
        type_vocab_size=max(s.type_vocab, 1),
        hidden_act=s.act,
    )
    hf = BertModel(cfg, add_pooling_layer=False).to(next(model.parameters()).device).eval()
    for layer, (h, n) in zip(hf.encoder.layer, structure, strict=True):
        keep_a = torch.arange(h * s.head_dim, device=hf.device)
        keep_n = torch.arange(n, device=hf.device)
        att = layer.attention
        att.self.query = prune_linear_layer(att.self.query, keep_a)
        att.self.key = prune_linear_layer(att.self.key, keep_a)
        att.self.value = prune_linear_layer(att.self.value, keep_a)
        att.output.dense = prune_linear_layer(att.output.dense, keep_a, dim=1)
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, keep_n)
        layer.output.dense = prune_linear_layer(layer.output.dense, keep_n, dim=1)
    return hf


def measure(
    model: ElasticModel, levels: list[float], batch: int, seq: int, device: str, baselines: bool, repeats: int = 7
) -> list[dict]:
    ids = torch.randint(5, model.shape.vocab_size, (batch, seq), device=device)
    mask = torch.ones_like(ids)
    full = ((model.shape.heads, model.shape.intermediate),) * model.shape.layers

    def dense() -> object:
        return model(input_ids=ids, attention_mask=mask, sparsity=0.0)

    rows = []
    for s in levels:
        st = model.structure(s)
        # each level is timed alternately with the dense model, so the ratio is measured under the same load
        dense_ms, ours_ms = paired_ms(
            dense, lambda s=s: model(input_ids=ids, attention_mask=mask, sparsity=s), device, repeats
        )
        row = {
            "sparsity": s,
            "batch": batch,
            "seq_len": seq,
            "dense_ms": round(dense_ms, 3),
            "ideal_speedup": round(flops(model.shape, full, seq) / flops(model.shape, st, seq), 3),
            "dynsparse_ms": round(ours_ms, 3),
            "dynsparse_speedup": round(dense_ms / ours_ms, 3),
        }
        if baselines:
            row.update(_baselines(model, dense, st, ids, mask, device))
        rows.append(row)
    return rows


def _baselines(
    model: ElasticModel, dense: Callable[[], object], st: Structure, ids: torch.Tensor, mask: torch.Tensor, device: str
) -> dict[str, float]:
    """Masking (full-size matmuls, zeroed units) and a physically pruned transformers model, each vs dense."""
    full = ((model.shape.heads, model.shape.intermediate),) * model.shape.layers
    dtype = next(model.parameters()).dtype
    hm, nm = (m.to(device, dtype) for m in prefix_masks(st, model.shape.heads, model.shape.intermediate))
    d1, masked = paired_ms(
        dense, lambda: model(input_ids=ids, attention_mask=mask, structure=full, head_mask=hm, neuron_mask=nm), device
    )
    pruned = pruned_copy(model, st)
    d2, pruned_ms = paired_ms(dense, lambda: pruned(input_ids=ids, attention_mask=mask), device)
    return {
        "masked_ms": round(masked, 3),
        "masked_speedup": round(d1 / masked, 3),
        "pruned_hf_ms": round(pruned_ms, 3),
        "pruned_hf_speedup": round(d2 / pruned_ms, 3),
    }


def plot(rows: list[dict], out: Path, title: str) -> None:
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(7, 4.2), dpi=120)
    sel = [r for r in rows if r["batch"] == 8 and r["seq_len"] == 128] or rows
    s = [r["sparsity"] for r in sel]
    ax.plot(s, [r["ideal_speedup"] for r in sel], "k--", label="FLOP-ideal")
    ax.plot(s, [r["dynsparse_speedup"] for r in sel], "o-", label="dynsparse (prefix slices)")
    if "pruned_hf_speedup" in sel[0]:
        ax.plot(s, [r["pruned_hf_speedup"] for r in sel], "s-", label="transformers, physically pruned")
        ax.plot(s, [r["masked_speedup"] for r in sel], "x-", label="masking")
    ax.set_xlabel("sparsity")
    ax.set_ylabel("speedup over dense")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png")


def main() -> None:
    args = base_parser(__doc__.splitlines()[0]).parse_args()
    model = load_model(args.model, args.device)
    if args.device.startswith("cuda"):
        model = model.half()
    levels = [0.0, 0.25, 0.5, 0.75, 0.9] if args.quick else [round(i / 10, 1) for i in range(10)]
    grid = [(1, 128), (8, 128)] if args.quick else [(b, t) for b in (1, 8, 32) for t in (32, 128, 512)]
    gpu = args.device.startswith("cuda")
    rows = []
    for b, t in tqdm(grid, desc="latency grid"):
        if (b, t) == (8, 128) or gpu:  # the headline point (and every point on a GPU): all levels and baselines
            rows += measure(model, levels, b, t, args.device, baselines=True, repeats=7 if args.quick else 15)
        else:  # CPU: the rest of the grid at two levels, so the full run stays in minutes (32 x 512 is ~7 s a call)
            rows += measure(model, [0.5] if args.quick else [0.5, 0.9], b, t, args.device, False, repeats=3)
    ref = next(r for r in rows if r["sparsity"] == 0.5 and r["batch"] == 8 and r["seq_len"] == 128)
    out = Path(args.out)
    name = model.meta.base_model or "model"
    summary = {
        "fraction_of_ideal": round(ref["dynsparse_speedup"] / ref["ideal_speedup"], 3),
        "speedup_at_0.5_b8_t128": ref["dynsparse_speedup"],
        "ideal_at_0.5_b8_t128": ref["ideal_speedup"],
        "pruned_hf_speedup_at_0.5_b8_t128": ref.get("pruned_hf_speedup"),
        "masked_speedup_at_0.5_b8_t128": ref.get("masked_speedup"),
        "device": device_name(args.device),
    }
    write_result(out, "latency", {"summary": summary, "rows": rows, "model": str(name), "quick": args.quick})
    plot(rows, out, f"{Path(str(name)).name} on {summary['device']}: batch 8 x 128 tokens")


if __name__ == "__main__":
    main()
