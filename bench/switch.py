"""Switching and memory: what it costs to change size between requests, and to hold every level ready.

dynsparse keeps one set of weights and takes prefix views; the usual alternative keeps one pruned model per
level. Memory is counted as the bytes of distinct tensor storages each approach must keep.

    python bench/switch.py --out bench/results/switch [--quick]

summary.memory_ratio_all_levels: bytes to hold every level / bytes of the dense model (dynsparse).
summary.switch_ms: extra time per size switch: four requests alternating sizes (3 switches) minus the same
four requests grouped by size (1 switch), halved; around 0 when a switch costs nothing.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import base_parser, device_name, load_model, paired_ms, plt, write_result  # noqa: E402
from latency import pruned_copy  # noqa: E402

from dynsparse.modeling import ElasticModel  # noqa: E402


def storage_bytes(modules: list[torch.nn.Module]) -> int:
    """Bytes of the distinct storages behind all parameters and buffers (views count once)."""
    seen: dict[int, int] = {}
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def live_views_bytes(model: ElasticModel, levels: list[float]) -> int:
    """Hold a forward's worth of weight views for every level at once and count storages: still the dense ones."""
    views = []
    for s in levels:
        for layer, (h, n) in zip(model.layers, model.structure(s), strict=True):
            a = h * model.shape.head_dim
            views += [
                layer.q_weight[:a],
                layer.attn_out_weight_t[:a],
                layer.ffn_in_weight[:n],
                layer.ffn_out_weight_t[:n],
            ]
    extra = {v.untyped_storage().data_ptr() for v in views} - {
        p.untyped_storage().data_ptr() for p in model.parameters()
    }
    return storage_bytes([model]) + len(extra)  # len(extra) is 0 when no view copied anything


def main() -> None:
    args = base_parser(__doc__.splitlines()[0]).parse_args()
    model = load_model(args.model, args.device)
    levels = [0.0, 0.5, 0.9] if args.quick else [round(i / 10, 1) for i in range(10)]
    dense = storage_bytes([model])
    ours = live_views_bytes(model, levels)
    pruned = [pruned_copy(model, model.structure(s)) for s in levels]
    per_level = storage_bytes(pruned)
    ids = torch.randint(5, model.shape.vocab_size, (1, 32), device=args.device)
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}

    def run(sizes: tuple[float, ...]) -> None:
        for size in sizes:
            model(input_ids=ids, sparsity=size)

    # same work, different order: 3 size switches vs 1, timed alternately so noise hits both alike
    switching, grouped = paired_ms(
        lambda: run((0.0, 0.9, 0.0, 0.9)), lambda: run((0.0, 0.0, 0.9, 0.9)), args.device, repeats=30
    )
    switch_ms = (switching - grouped) / 2
    moved = ptrs != {n: p.data_ptr() for n, p in model.named_parameters()}
    summary = {
        "memory_ratio_all_levels": round(ours / dense, 4),
        "per_level_models_ratio": round(per_level / dense, 3),
        "switch_ms": round(switch_ms, 4),
        "weights_copied_on_switch": moved,
        "levels": len(levels),
        "device": device_name(args.device),
    }
    doc = {
        "summary": summary,
        "dense_bytes": dense,
        "dynsparse_all_levels_bytes": ours,
        "pruned_models_all_levels_bytes": per_level,
        "four_requests_switching_ms": switching,
        "four_requests_grouped_ms": grouped,
    }
    out = Path(args.out)
    write_result(out, "switch", doc)
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6, 3.5), dpi=120)
    ax.bar(
        ["dense model", f"dynsparse\n(all {len(levels)} levels)", f"one pruned model\nper level ({len(levels)})"],
        [dense / 2**20, ours / 2**20, per_level / 2**20],
        color=["grey", "tab:blue", "tab:orange"],
    )
    ax.set_ylabel("MiB of weights held")
    ax.set_title(f"Memory to serve every level ({summary['device']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "switch.png")


if __name__ == "__main__":
    main()
