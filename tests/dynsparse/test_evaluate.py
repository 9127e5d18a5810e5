from dynsparse.evaluate import format_table
from dynsparse.levels import default_levels, thin, trained_levels


def test_default_levels_reach_the_trained_maximum() -> None:
    assert default_levels(0.9) == [round(i / 10, 1) for i in range(10)]
    assert default_levels(0.75)[-1] == 0.75 and default_levels(0.75)[-2] == 0.7


def test_table_has_a_row_per_level() -> None:
    rows = [
        {"sparsity": s, "accuracy": 0.9, "params": 10, "flops": 1e9, "latency_ms": 1.0, "speedup": 1.0}
        for s in (0.0, 0.5)
    ]
    text = format_table(rows, "accuracy")
    assert len(text.splitlines()) == 3 and "accuracy" in text.splitlines()[0]


def test_trained_levels_cover_the_range_and_thin_to_a_count() -> None:
    assert trained_levels(0.0, 0.9) == default_levels(0.9)
    assert trained_levels(0.25, 0.9) == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert trained_levels(0.0, 0.9, 10) == default_levels(0.9)
    assert trained_levels(0.0, 0.95) == default_levels(0.95) and len(default_levels(0.95)) == 11  # default: all
    assert trained_levels(0.0, 0.9, 2) == [0.0, 0.9] and trained_levels(0.0, 0.9, 4) == [0.0, 0.3, 0.6, 0.9]
    assert thin([0.0, 0.5], 1) == [0.0]
