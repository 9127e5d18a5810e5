import pytest
from pydantic import ValidationError

from service.settings import Settings, get_settings


def test_defaults_suit_a_small_server() -> None:
    s = Settings(checkpoint="ckpt")
    assert s.queue_limit >= 256 and s.max_batch_size >= 8 and s.device is None and s.dtype == "auto"
    assert s.api_key is None and s.levels is None and s.sizes is None and s.degrade_at is not None
    assert s.default_size is None and s.default_latency_budget_ms is None and s.request_timeout_s > 0


def test_environment_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNSPARSE_CHECKPOINT", "/ckpt")
    monkeypatch.setenv("DYNSPARSE_QUEUE_LIMIT", "300")
    monkeypatch.setenv("DYNSPARSE_SIZES", '{"tiny": 0.9}')
    monkeypatch.setenv("DYNSPARSE_LEVELS", "[0.5, 0.0, 0.5]")
    monkeypatch.setenv("DYNSPARSE_API_KEY", "secret")
    s = Settings()  # type: ignore[call-arg]
    assert str(s.checkpoint) == "/ckpt" and s.queue_limit == 300 and s.sizes == {"tiny": 0.9}
    assert s.levels == [0.0, 0.5]  # sorted, deduplicated
    assert s.api_key is not None and s.api_key.get_secret_value() == "secret" and "secret" not in repr(s)


def test_arguments_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNSPARSE_MAX_BATCH_SIZE", "8")
    assert Settings(checkpoint="c", max_batch_size=4).max_batch_size == 4


def test_get_settings_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNSPARSE_CHECKPOINT", "/ckpt")
    get_settings.cache_clear()
    try:
        assert get_settings() is get_settings()
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(
    "bad",
    [
        {"min_sparsity": 0.8, "max_sparsity": 0.2},
        {"default_size": "small", "default_latency_budget_ms": 5.0},
        {"sizes": {"x": 1.0}},
        {"sizes": {" ": 0.5}},
        {"levels": []},
        {"levels": [1.2]},
        {"queue_limit": 0},
        {"max_sparsity": 1.0},
        {"degrade_at": 0.0},
        {"profile_seq_lens": [0]},
        {"dtype": "int8"},
        {"budget_quantile": 1.0},
        {"budget_quantile": 0.2},
        {"batch_wait_ms": -1.0},
        {"no_such_setting": 1},
    ],
)
def test_bad_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(checkpoint="c", **bad)  # type: ignore[arg-type]


def test_null_in_the_environment_turns_a_setting_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNSPARSE_DEGRADE_AT", "null")  # as the README documents: never degrade
    monkeypatch.setenv("DYNSPARSE_PROFILE_CACHE_DIR", "null")
    s = Settings(checkpoint="c")
    assert s.degrade_at is None and s.profile_cache_dir is None
