from dynsparse.evaluate import default_levels, format_table


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
