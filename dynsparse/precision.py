"""Reduced precision: which float type a model runs in, chosen for the hardware, and casting it once.

Every size is a prefix view of the same weights, so casting the model once keeps every size a zero-copy view
in the new type. `auto` picks a reduced type only where the hardware has instructions for it, since emulated
bfloat16 is *slower* than float32 (on an AVX2-only Zen 3 core, measured by `bench/precision.py`):

- CPU: bfloat16 when the CPU flags (Linux `/proc/cpuinfo`) have `amx_bf16` or `avx512_bf16` (x86: Sapphire
  Rapids and later, Zen 4 and later) or `bf16` (Arm: Neoverse V1/N2, Graviton 3 and later); else float32.
  These are the same flags oneDNN (under torch and OpenVINO) dispatches its bfloat16 kernels on, and the
  reason OpenVINO's default `INFERENCE_PRECISION_HINT` is bf16 on such CPUs and f32 elsewhere.
- CUDA: float16 (tensor cores on every CUDA GPU; 3 more mantissa bits than bfloat16, and a post-LayerNorm
  encoder's activations stay far inside its range); bfloat16 on request where `torch.cuda.is_bf16_supported`.
"""

from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from dynsparse.errors import InputError

DtypeName = Literal["auto", "float32", "float16", "bfloat16"]
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_BF16_FLAGS = {"amx_bf16", "avx512_bf16", "bf16"}  # x86 (AMX, AVX512-BF16) and Arm (FEAT_BF16)
_FP16_FLAGS = {"amx_fp16", "avx512_fp16", "fphp", "asimdhp"}  # x86 (AMX-FP16, AVX512-FP16) and Arm half precision


@lru_cache
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (x86 `flags`, Arm `Features`); empty where /proc/cpuinfo is missing (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def accelerated_dtypes(device: torch.device, flags: frozenset[str] | None = None) -> list[torch.dtype]:
    """The reduced float types `device` has instructions for, best first."""
    if device.type == "cuda":
        return [torch.float16, *([torch.bfloat16] if torch.cuda.is_bf16_supported() else [])]
    if device.type != "cpu":
        return []
    flags = cpu_flags() if flags is None else flags
    return [t for t, need in ((torch.bfloat16, _BF16_FLAGS), (torch.float16, _FP16_FLAGS)) if flags & need]


def pick_dtype(name: str, device: torch.device, flags: frozenset[str] | None = None) -> torch.dtype:
    """`name` as a torch dtype; `auto`: the best accelerated reduced type on `device`, else float32.

    Raises:
        InputError: an unknown name, or float16 on a CPU without half-precision arithmetic (torch would
            emulate it at a fraction of float32's speed).
    """
    if name == "auto":
        fast = [t for t in accelerated_dtypes(device, flags) if t != torch.float16 or device.type == "cuda"]
        return fast[0] if fast else torch.float32  # a CPU's fp16 units: only on request (bf16 keeps fp32's range)
    if name not in DTYPES:
        raise InputError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {name!r}")
    dtype = DTYPES[name]
    if dtype == torch.float16 and device.type == "cpu" and torch.float16 not in accelerated_dtypes(device, flags):
        raise InputError("dtype float16 needs a GPU or a CPU with half-precision arithmetic; use float32 or bfloat16")
    return dtype


def cast_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast the parameters in place, once; buffers (importance scores, vocabulary map) keep their types, so the
    ordering and every size's structure are the same as in float32."""
    if dtype != torch.float32:
        for p in model.parameters():
            p.data = p.data.to(dtype)
    return model
