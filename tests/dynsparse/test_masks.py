import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynsparse.masks import (
    global_structure,
    keep_count,
    nested_mask,
    prefix_masks,
    rank_globally,
    uniform_structure,
)

sparsity = st.floats(min_value=0.0, max_value=0.999)


def _within(small: tuple, large: tuple) -> bool:
    return all(h1 <= h2 and n1 <= n2 for (h1, n1), (h2, n2) in zip(small, large, strict=True))


@given(a=sparsity, b=sparsity)
def test_uniform_is_nested_and_keeps_one_unit(a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    dense, sparse = uniform_structure(lo, 3, 12, 1536), uniform_structure(hi, 3, 12, 1536)
    assert _within(sparse, dense)
    assert all(h >= 1 and n >= 1 for h, n in sparse)


@settings(max_examples=50, deadline=None)
@given(a=sparsity, b=sparsity, seed=st.integers(0, 1000))
def test_global_is_nested_and_fits_budget(a: float, b: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    heads = torch.rand(3, 4, generator=g).sort(-1, descending=True).values
    neurons = torch.rand(3, 16, generator=g).sort(-1, descending=True).values
    ranking = rank_globally(heads, neurons, head_cost=100, neuron_cost=9)
    lo, hi = sorted((a, b))
    dense, sparse = global_structure(lo, ranking), global_structure(hi, ranking)
    assert _within(sparse, dense)
    assert all(h >= 1 and n >= 1 for h, n in sparse)
    kept = sum(h * 100 + n * 9 for h, n in sparse)
    forced = 3 * (100 + 9)
    assert kept <= max((1 - hi) * ranking.total_cost + 1e-6, forced)


def test_global_prefers_the_important_layer() -> None:
    heads = torch.tensor([[1.0, 0.9, 0.8, 0.7], [0.01, 0.01, 0.01, 0.01]])
    neurons = torch.tensor([[1.0] * 8, [0.01] * 8])
    structure = global_structure(0.5, rank_globally(heads, neurons, 100, 9))
    assert structure[0][0] > structure[1][0] and structure[0][1] > structure[1][1]


def test_keep_count_rounds_and_clamps() -> None:
    assert keep_count(12, 0.0) == 12 and keep_count(12, 0.5) == 6 and keep_count(4, 0.99) == 1
    assert [keep_count(10, s / 20) for s in range(20)] == sorted(
        (keep_count(10, s / 20) for s in range(20)), reverse=True
    )


def test_prefix_masks_match_structure() -> None:
    hm, nm = prefix_masks(((2, 3), (1, 5)), heads=4, neurons=6)
    assert hm.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]] and nm.sum(-1).tolist() == [3, 5]


def test_nested_mask_is_top_k_and_nested() -> None:
    scores = torch.rand(3, 10, generator=torch.Generator().manual_seed(0))
    small, large = nested_mask(scores, torch.tensor([2, 2, 2])), nested_mask(scores, torch.tensor([5, 5, 5]))
    assert torch.all(small <= large) and small.sum(-1).eq(2).all()
    assert torch.equal(small[0].nonzero().flatten().sort().values, scores[0].topk(2).indices.sort().values)
