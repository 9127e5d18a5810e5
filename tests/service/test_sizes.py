import pytest

from dynsparse.errors import InputError
from service.errors import BadInput
from service.settings import Settings
from service.sizes import Choice, SizePolicy

TRAINED = (0.0, 0.9)


def policy(**kw: object) -> SizePolicy:
    return SizePolicy.build(Settings(checkpoint="c", **kw), TRAINED)  # type: ignore[arg-type]


def test_defaults_follow_the_trained_range() -> None:
    p = policy()
    assert (p.low, p.high, p.grid) == (0.0, 0.9, None)
    assert p.named == {"dense": 0.0, "medium": 0.45, "small": 0.9}
    assert p.default == Choice(0.0) and p.smallest == 0.9
    assert p.candidates() == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def test_a_request_gets_exactly_its_sparsity_without_a_grid() -> None:
    assert policy().select(0.37, None, None) == Choice(0.37, exact=True)


def test_a_grid_serves_the_next_denser_level() -> None:
    p = policy(levels=[0.0, 0.5, 0.8])
    assert [p.select(s, None, None).sparsity for s in (0.0, 0.49, 0.5, 0.79, 0.9)] == [0.0, 0.0, 0.5, 0.5, 0.8]
    assert p.candidates() == [0.0, 0.5, 0.8] and p.smallest == 0.8


def test_named_sizes_default_and_budget() -> None:
    p = policy(sizes={"fast": 0.8, "best": 0.0}, default_size="fast")
    assert p.select(None, "best", None) == Choice(0.0, name="best")
    assert p.select(None, None, None) == Choice(0.8, name="fast")
    assert p.select(None, None, 12.5) == Choice(None, budget_ms=12.5)
    assert policy(default_size="0.3").default == Choice(0.3)
    assert policy(default_latency_budget_ms=7.0).default == Choice(None, budget_ms=7.0)


@pytest.mark.parametrize("sparsity", [-0.01, 0.95])
def test_sparsity_outside_the_allowed_range_is_bad_input(sparsity: float) -> None:
    with pytest.raises(BadInput, match="outside the allowed range"):
        policy().select(sparsity, None, None)


def test_operator_range_narrows_what_requests_may_ask() -> None:
    p = policy(min_sparsity=0.2, max_sparsity=0.6)
    assert p.named["dense"] == 0.2 and p.smallest == 0.6
    with pytest.raises(BadInput):
        p.select(0.1, None, None)


def test_unknown_size_name_lists_the_known_ones() -> None:
    with pytest.raises(BadInput, match="dense, medium, small"):
        policy().select(None, "huge", None)


@pytest.mark.parametrize(
    "bad",
    [
        {"sizes": {"x": 0.95}},
        {"default_size": "nope"},
        {"default_size": "0.99"},
        {"levels": [0.95]},
        {"min_sparsity": 0.5, "levels": [0.1, 0.2]},
    ],
)
def test_inconsistent_operator_sizes_fail_at_start(bad: dict[str, object]) -> None:
    with pytest.raises(InputError):
        policy(**bad)
