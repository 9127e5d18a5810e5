"""Reduced precision: the dtype picked per hardware, and a cast model whose sizes stay views and agree with fp32."""

from pathlib import Path

import pytest
import torch

import dynsparse
from dynsparse.errors import InputError
from dynsparse.precision import cast_model, cpu_flags, pick_dtype

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
AVX2 = frozenset({"avx2", "fma", "f16c"})  # Zen 3: no bf16 instructions
SPR = AVX2 | {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16"}  # Sapphire Rapids


def test_auto_picks_bf16_only_where_the_cpu_has_it() -> None:
    assert pick_dtype("auto", CPU, AVX2) == torch.float32
    assert pick_dtype("auto", CPU, SPR) == torch.bfloat16
    assert pick_dtype("auto", CPU, frozenset({"fp", "asimd", "bf16"})) == torch.bfloat16  # Arm, e.g. Graviton 3
    assert pick_dtype("auto", CUDA) == torch.float16


def test_explicit_dtypes_and_errors() -> None:
    assert pick_dtype("bfloat16", CPU, AVX2) == torch.bfloat16  # allowed (emulated): the operator asked for it
    assert pick_dtype("float16", CPU, SPR) == torch.float16
    with pytest.raises(InputError, match="float16 needs a GPU"):
        pick_dtype("float16", CPU, AVX2)
    with pytest.raises(InputError, match="dtype must be one of"):
        pick_dtype("int8", CPU, AVX2)


def test_cpu_flags_read_proc_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_cast_model_keeps_views_and_agrees_with_fp32(tiny_ckpt: Path, dtype: torch.dtype) -> None:
    ref, low = dynsparse.load(str(tiny_ckpt)).eval(), cast_model(dynsparse.load(str(tiny_ckpt)).eval(), dtype)
    assert all(p.dtype == dtype for p in low.parameters()) and low.head_scores.dtype == torch.float32
    assert low.structure(0.5) == ref.structure(0.5)  # the ordering is the fp32 one
    batch = dict(ref.tokenizer(["w1 w2 w3 w4 w5 w6", "w7 w8", "w9"], padding=True, return_tensors="pt"))
    with torch.inference_mode():
        for s in (0.0, 0.5, 0.9):
            a, b = ref(**batch, sparsity=s).logits, low(**batch, sparsity=s, unpad=True).logits
            assert b.dtype == dtype and torch.allclose(a, b.float(), atol=0.05), s
