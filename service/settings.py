"""Operator settings: `DYNSPARSE_*` environment variables, overridden by `dynsparse serve` flags.

Example:
    >>> settings = Settings(checkpoint="runs/sst2", max_batch_size=16)   # or DYNSPARSE_MAX_BATCH_SIZE=16
    >>> app = create_app(settings)
"""

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Dtype = Literal["auto", "float32", "float16", "bfloat16"]


def default_cache_dir() -> Path:
    """Where measured latency profiles are cached (one JSON per checkpoint, device and dtype)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dynsparse" / "profiles"


class Settings(BaseSettings):
    """Everything an operator can set; every field is also `DYNSPARSE_<NAME>` (lists and dicts as JSON)."""

    model_config = SettingsConfigDict(env_prefix="DYNSPARSE_", extra="forbid", env_parse_none_str="null")

    # -- what to serve, and where
    checkpoint: Path = Field(description="dynsparse checkpoint directory (loaded once, serves every size)")
    served_model_name: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        pattern=r"^[^:/\s]+$",
        description="the model id of the OpenAI, TEI and KServe routes (NAME, NAME:SIZE); default: the checkpoint "
        "directory's name",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    device: str | None = Field(None, description="torch device; default: cuda when available, else cpu")
    dtype: Dtype = Field(
        "auto",
        description="auto: float16 on cuda, bfloat16 on a CPU with bf16 instructions (AMX, AVX512-BF16), "
        "else float32 (see dynsparse.precision)",
    )
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads; default: every usable core")
    single_thread_below: int = Field(
        256,
        ge=0,
        description="CPU: a batch under this many real tokens times the share of the weights its size keeps runs "
        "on one thread (waking the others costs more than they give back); 0: always torch_threads",
    )
    traced_graphs: bool | None = Field(
        None,
        description="run each size as a TorchScript graph traced over the shared weights (no GIL taken per op: "
        "faster while the event loop is busy); default: on for cpu (below Python 3.14), off for cuda",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    # -- sizes
    min_sparsity: float | None = Field(None, ge=0, lt=1, description="densest size allowed; default: trained min")
    max_sparsity: float | None = Field(None, ge=0, lt=1, description="smallest size allowed; default: trained max")
    sizes: dict[str, float] | None = Field(None, description="named sizes; default: dense, medium, small")
    levels: list[float] | None = Field(None, description="a grid: requests are served at the next denser level")
    default_size: str | None = Field(None, description="a size name or a sparsity; default: the densest allowed")
    default_latency_budget_ms: float | None = Field(None, gt=0, description="budget for requests that pick none")
    budget_quantile: float = Field(
        0.99, ge=0.5, lt=1, description="share of latency budgets to plan for (the quantile of recent mispredictions)"
    )
    budget_overhead_ms: float = Field(
        0.0, ge=0, description="ms of each budget spent outside the server (network, client): planned without"
    )

    # -- quality: shadow agreement with the dense size, a floor for budgets and overload, SLO goodput
    shadow_fraction: float = Field(
        0.02, ge=0, le=1, description="share of requests served below dense re-run at dense when idle; 0: off"
    )
    shadow_inputs: int = Field(4, ge=1, le=64, description="inputs of a request compared (its first), and per batch")
    shadow_queue_limit: int = Field(64, ge=1, description="shadow re-runs waiting for an idle moment (oldest dropped)")
    min_agreement: float | None = Field(
        None, ge=0, le=1, description="budgets and overload never pick a size whose agreement with dense is below it"
    )
    min_agreement_sizes: dict[str, float] | None = Field(
        None, description="per named size: a request for it runs denser while its agreement is below this"
    )
    agreement_min_samples: int = Field(
        50, ge=1, description="shadow samples before a size's measured agreement replaces its offline estimate"
    )
    slo_window_s: float = Field(60.0, gt=0, description="window of the goodput rates shown on the console")

    # -- batching and overload
    max_batch_size: int = Field(32, ge=1, le=4096, description="inputs per forward pass")
    batch_wait_ms: float | None = Field(
        None, ge=0, le=10_000, description="how long an idle worker waits to fill a batch; default: 2 on cuda, 0 on cpu"
    )
    queue_limit: int = Field(256, ge=1, description="requests waiting; beyond it: 429 with Retry-After")
    degrade_at: float | None = Field(
        0.75,
        gt=0,
        le=1,
        description="queue fill at which size-flexible requests get the smallest size; null: never",
    )
    request_timeout_s: float = Field(30.0, gt=0, description="per-request deadline (504 after it)")

    # -- request limits
    max_inputs: int = Field(64, ge=1, description="texts per request")
    max_tokens: int = Field(512, ge=4, description="tokens per text (capped by the model's positions)")
    max_text_chars: int = Field(20_000, ge=1, description="characters per text, checked before tokenizing")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="request body size (413 beyond it)")
    api_key: SecretStr | None = Field(None, description="if set, /v1/* needs `Authorization: Bearer <key>`")
    cors_origins: list[str] | None = Field(
        None, description='browser origins allowed to call the API (CORS), e.g. ["https://app.example"]; none: no CORS'
    )

    # -- startup latency profile (a few points, interpolated; cached per checkpoint, device and dtype)
    profile_levels: int = Field(4, ge=2, le=32, description="sizes measured, evenly spread over the range")
    profile_batch_sizes: list[int] = Field([1, 8], min_length=1)
    profile_seq_lens: list[int] = Field([16, 128], min_length=1)
    profile_cache_dir: Path | None = Field(default_factory=default_cache_dir, description="null: measure each start")

    @field_validator("sizes")
    @classmethod
    def _check_sizes(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for name, s in (v or {}).items():
            if not name.strip() or not 0.0 <= s < 1.0 or not math.isfinite(s):
                raise ValueError(f"a named size needs a name and a sparsity in [0, 1), got {name!r}: {s}")
        return v

    @field_validator("min_agreement_sizes")
    @classmethod
    def _check_floors(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for name, floor in (v or {}).items():
            if not 0.0 <= floor <= 1.0:
                raise ValueError(f"an agreement floor is in [0, 1], got {name!r}: {floor}")
        return v

    @field_validator("levels")
    @classmethod
    def _check_levels(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return None
        if not v or not all(0.0 <= s < 1.0 for s in v):
            raise ValueError(f"levels must be a non-empty list of sparsities in [0, 1), got {v}")
        return sorted(set(v))

    @field_validator("profile_batch_sizes", "profile_seq_lens")
    @classmethod
    def _check_positive(cls, v: list[int]) -> list[int]:
        if not all(x >= 1 for x in v):
            raise ValueError(f"need positive integers, got {v}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _check_together(self) -> "Settings":
        lo, hi = self.min_sparsity, self.max_sparsity
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min_sparsity {lo} is above max_sparsity {hi}")
        if self.default_size is not None and self.default_latency_budget_ms is not None:
            raise ValueError("set at most one of default_size and default_latency_budget_ms")
        return self


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()  # type: ignore[call-arg]  # checkpoint comes from DYNSPARSE_CHECKPOINT
