import torch

from dynsparse.schedule import batch_indices, sample_sizes, total_steps


def test_sandwich_rule_and_determinism() -> None:
    sizes = sample_sizes(step=7, seed=1, min_sparsity=0.0, max_sparsity=0.9, count=4)
    assert sizes[:2] == [0.0, 0.9] and len(sizes) == 4 and all(0.0 <= s <= 0.9 for s in sizes)
    assert sizes == sample_sizes(7, 1, 0.0, 0.9, 4)
    assert sizes != sample_sizes(8, 1, 0.0, 0.9, 4)


def test_an_epoch_visits_every_example_once() -> None:
    seen = torch.cat([batch_indices(m, seed=3, num_examples=50, batch_size=16) for m in range(4)])
    assert sorted(seen.tolist()) == list(range(50))
    assert not torch.equal(batch_indices(4, 3, 50, 16), batch_indices(0, 3, 50, 16))  # next epoch reshuffles


def test_total_steps() -> None:
    assert total_steps(max_steps=10, epochs=3, num_examples=100, batch_size=10, accumulation=1) == 10
    assert total_steps(max_steps=-1, epochs=2, num_examples=100, batch_size=10, accumulation=2) == 10
