"""Property tests (hypothesis) that span masks, rewiring, slicing and cost: for any importance scores and any
sparsity, the units kept are the most important ones and nested, the sliced forward equals the masked one, and
the accounting counts exactly the weights the sliced forward reads."""

import copy
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dynsparse
from dynsparse.cost import head_cost, level_costs, neuron_cost
from dynsparse.masks import global_structure, prefix_masks, rank_globally, uniform_structure
from dynsparse.rewire import rewire, unit_order

sparsity = st.floats(min_value=0.0, max_value=0.999)
seeds = st.integers(0, 2**16)
ALLOCATIONS = ("uniform", "global")


def _kept_sets(structure: tuple, h_order: torch.Tensor, n_order: torch.Tensor) -> list[tuple[set, set]]:
    """Per layer, the original ids of the heads and neurons a rewired model keeps (its rows are a prefix)."""
    return [(set(h_order[i, :h].tolist()), set(n_order[i, :n].tolist())) for i, (h, n) in enumerate(structure)]


@settings(max_examples=150, deadline=None)
@given(
    layers=st.integers(1, 4), heads=st.integers(1, 8), neurons=st.integers(1, 40), a=sparsity, b=sparsity, seed=seeds
)
def test_uniform_keeps_each_layers_top_units_nested(
    layers: int, heads: int, neurons: int, a: float, b: float, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    hs, ns = torch.rand(layers, heads, generator=g), torch.rand(layers, neurons, generator=g)
    ho, no = unit_order(hs), unit_order(ns)
    lo, hi = sorted((a, b))
    dense, sparse = (_kept_sets(uniform_structure(s, layers, heads, neurons), ho, no) for s in (lo, hi))
    for (dh, dn), (sh, sn), h_row, n_row in zip(dense, sparse, hs, ns, strict=True):
        assert sh <= dh and sn <= dn and sh and sn  # nested, and never empty
        dropped = set(range(heads)) - sh
        assert not dropped or min(h_row[list(sh)]) >= max(h_row[list(dropped)])  # the top scores stay
        dropped = set(range(neurons)) - sn
        assert not dropped or min(n_row[list(sn)]) >= max(n_row[list(dropped)])


@settings(max_examples=150, deadline=None)
@given(
    layers=st.integers(1, 4),
    heads=st.integers(1, 8),
    neurons=st.integers(1, 40),
    a=sparsity,
    b=sparsity,
    seed=seeds,
    hc=st.integers(1, 500),
    nc=st.integers(1, 500),
)
def test_global_keeps_one_threshold_of_importance_per_parameter(
    layers: int, heads: int, neurons: int, a: float, b: float, seed: int, hc: int, nc: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    hs = torch.rand(layers, heads, generator=g).sort(-1, descending=True).values  # a rewired model's scores
    ns = torch.rand(layers, neurons, generator=g).sort(-1, descending=True).values
    ranking = rank_globally(hs, ns, hc, nc)
    lo, hi = sorted((a, b))
    dense, sparse = global_structure(lo, ranking), global_structure(hi, ranking)
    assert all(h2 <= h1 and n2 <= n1 for (h1, n1), (h2, n2) in zip(dense, sparse, strict=True))
    # one threshold over all units: every kept unit (beyond each layer's forced first head and neuron) is worth
    # at least as much per parameter as every dropped one
    h_ratio, n_ratio = hs.double() / hs.double().sum() / hc, ns.double() / ns.double().sum() / nc
    kept, dropped = [], []
    for i, (h, n) in enumerate(sparse):
        assert h >= 1 and n >= 1
        kept += h_ratio[i, 1:h].tolist() + n_ratio[i, 1:n].tolist()
        dropped += h_ratio[i, h:].tolist() + n_ratio[i, n:].tolist()
    assert not kept or not dropped or min(kept) >= max(dropped) - 1e-12
    # the cut keeps within (1 - s) of the prunable parameters, and the next unit would not have fit
    cost = sum(h * hc + n * nc for h, n in sparse)
    budget = (1 - hi) * ranking.total_cost
    assert cost <= max(budget + 1e-6, layers * (hc + nc))
    assert not dropped or cost + max(hc, nc) > budget - 1e-6


@pytest.fixture(scope="module")
def tiny_bert(tiny_dir: Path) -> dynsparse.ElasticModel:
    return dynsparse.from_pretrained(str(tiny_dir / "bert")).eval()


@settings(max_examples=12, deadline=None)
@given(s=sparsity, seed=seeds, allocation=st.sampled_from(ALLOCATIONS))
def test_sliced_equals_masked_at_any_sparsity(
    tiny_bert: dynsparse.ElasticModel, s: float, seed: int, allocation: str
) -> None:
    g = torch.Generator().manual_seed(seed)
    hs, ns = torch.rand(2, 4, generator=g), torch.rand(2, 64, generator=g)
    ids = torch.randint(8, 108, (3, 9), generator=g)  # (B, T) word ids of the tiny vocabulary
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # a padded row
    model = copy.deepcopy(tiny_bert)
    rewire(model, hs, ns)
    model.set_allocation(allocation)  # type: ignore[arg-type]
    structure = model.structure(s)
    hm, nm = prefix_masks(structure, 4, 64)  # in the rewired order; back to the original units:
    hm = torch.zeros_like(hm).scatter_(1, unit_order(hs), hm)
    nm = torch.zeros_like(nm).scatter_(1, unit_order(ns), nm)
    with torch.no_grad():
        sliced = model(input_ids=ids, attention_mask=mask, sparsity=s).logits
        masked = tiny_bert(
            input_ids=ids, attention_mask=mask, structure=((4, 64),) * 2, head_mask=hm, neuron_mask=nm
        ).logits
    assert torch.allclose(sliced, masked, atol=1e-5)


def _sliced_elements(model: dynsparse.ElasticModel, structure: tuple) -> int:
    """Elements of the weight views a sliced forward reads: rows [:heads * head_dim] of the attention weights,
    rows [:neurons] of the FFN weights, everything else whole (output biases, LayerNorms)."""
    hd = model.shape.head_dim
    total = 0
    for layer, (h, n) in zip(model.layers, structure, strict=True):
        for name, p in layer.named_parameters():
            rows = (
                h * hd
                if name.startswith(("q_", "k_", "v_", "attn_out_weight"))
                else n
                if name.startswith(("ffn_in", "ffn_out_weight"))
                else p.shape[0]
            )
            total += p[:rows].numel()
    return total


@settings(max_examples=60, deadline=None)
@given(a=sparsity, b=sparsity, seed=seeds, allocation=st.sampled_from(ALLOCATIONS))
def test_accounting_counts_the_weights_the_slice_reads(
    tiny_bert: dynsparse.ElasticModel, a: float, b: float, seed: int, allocation: str
) -> None:
    g = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(tiny_bert)
    model.set_scores(
        torch.rand(2, 4, generator=g).sort(-1, descending=True).values,
        torch.rand(2, 64, generator=g).sort(-1, descending=True).values,
    )
    model.set_allocation(allocation)  # type: ignore[arg-type]
    shape = model.shape
    rows = {}
    for s in sorted((a, b)):
        structure = model.structure(s)
        rows[s] = costs = level_costs(shape, structure, 16)
        assert costs["params_encoder"] == _sliced_elements(model, structure)
        assert costs["params"] == costs["params_encoder"] + costs["params_embeddings"] + sum(
            p.numel() for p in model.head.parameters()
        )
        removed = costs["prunable_removed"]
        if allocation == "uniform":  # per layer, heads and neurons each rounded to the nearest unit (at least 1)
            assert abs(removed - s) <= 1 / shape.heads + 1e-4
        else:  # the global cut removes at least s, and less than one more unit (unless the minimum is reached)
            full = shape.layers * (shape.heads * head_cost(shape) + shape.intermediate * neuron_cost(shape))
            unit = max(head_cost(shape), neuron_cost(shape)) / full
            floor = all(h == 1 and n == 1 for h, n in structure)
            assert removed >= s - 1e-4 or floor
            assert removed <= s + unit + 1e-4 or floor
    lo, hi = rows[min(a, b)], rows[max(a, b)]
    assert (
        hi["params"] <= lo["params"] and hi["flops"] <= lo["flops"] and hi["prunable_removed"] >= lo["prunable_removed"]
    )
