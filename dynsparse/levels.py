"""The level grid: which sparsities a level table, a profile and the server's size list cover.

No imports beyond the standard library: the service reads the grid without the evaluation code.
"""

STEP = 0.1  # the grid's spacing: 0.0, 0.1, ... (tables stay readable and comparable across checkpoints)


def default_levels(max_sparsity: float, step: float = STEP) -> list[float]:
    """0.0, 0.1, ... up to the trained maximum (inclusive)."""
    n = int(max_sparsity / step + 1e-6)
    levels = [round(i * step, 4) for i in range(n + 1)]
    return levels if abs(levels[-1] - max_sparsity) < 1e-6 else [*levels, round(max_sparsity, 4)]


def trained_levels(low: float, high: float, count: int | None = None) -> list[float]:
    """The grid over a trained range [low, high]; with `count`, at most that many, evenly spread, both ends kept."""
    grid = [x for x in default_levels(high) if x >= low] or [low]
    return thin(grid, count) if count is not None else grid


def thin(levels: list[float], count: int) -> list[float]:
    """`count` of `levels` (all when there are fewer), evenly spaced, the first and the last always among them."""
    if count < 1:
        raise ValueError(f"a level table needs at least one level, got {count}")
    if count >= len(levels):
        return list(levels)
    if count == 1:
        return [levels[0]]
    last = len(levels) - 1
    return [levels[round(i * last / (count - 1))] for i in range(count)]
