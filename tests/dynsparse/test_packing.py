"""Unpadded execution: the same outputs on every real token as the padded forward, at every size."""

from pathlib import Path

import pytest
import torch
from conftest import gpu_test, make_tiny

import dynsparse
from dynsparse.packing import Packing

TEXTS = ["w1 w2 w3 w4 w5 w6 w7 w8 w9 w10", "w7 w8", "w9 w10 w11", "w12"]


@pytest.mark.parametrize("task", ["text-classification", "token-classification", "question-answering"])
@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_unpadded_forward_equals_padded_on_real_tokens(tmp_path: Path, family: str, task: str) -> None:
    model = dynsparse.from_pretrained(str(make_tiny(family, tmp_path / family, task=task)), task=task).eval()
    batch = dict(model.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    if family == "distilbert":
        batch.pop("token_type_ids", None)
    real = batch["attention_mask"].bool()
    assert Packing.of(batch["attention_mask"]) is not None  # this batch is mostly padding: it really unpads
    per_token = task != "text-classification"  # their outputs at padding positions are read by nobody
    with torch.inference_mode():
        for s in (0.0, 0.5, 0.9):
            for depth in (None, 1):
                padded = model(**batch, sparsity=s, depth=depth)
                packed = model(**batch, sparsity=s, depth=depth, unpad=True)
                logits = (padded.logits[real], packed.logits[real]) if per_token else (padded.logits, packed.logits)
                assert logits[0].shape == logits[1].shape and torch.allclose(*logits, atol=1e-5), (s, depth)
                hidden = (padded.last_hidden_state[real], packed.last_hidden_state[real])
                assert torch.allclose(*hidden, atol=1e-5), (s, depth)
                assert packed.last_hidden_state[~real].abs().max() == 0  # padding positions come back zero


def test_unpadded_forward_with_a_language_ordering(tmp_path: Path) -> None:
    model = dynsparse.from_pretrained(str(make_tiny("bert", tmp_path / "bert"))).eval()
    g = torch.Generator().manual_seed(0)
    model.set_language_scores(["de", "en"], torch.rand(2, 2, 4, generator=g), torch.rand(2, 2, 64, generator=g))
    batch = dict(model.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    with torch.inference_mode():
        padded = model(**batch, sparsity=0.5, language="de").logits
        packed = model(**batch, sparsity=0.5, language="de", unpad=True).logits
    assert torch.allclose(padded, packed, atol=1e-5)


def test_little_padding_keeps_the_padded_path() -> None:
    assert Packing.of(torch.ones(4, 16, dtype=torch.long)) is None
    nearly_full = torch.ones(4, 16, dtype=torch.long)
    nearly_full[0, -2:] = 0  # 2 of 64 positions: under the 10% where unpadding pays
    assert Packing.of(nearly_full) is None


def test_pack_then_pad_restores_real_tokens() -> None:
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]])
    packing = Packing.of(mask)
    assert packing is not None and packing.index.tolist() == [0, 1, 2, 3, 4, 8, 9]
    x = torch.randn(3, 4, 5)
    back = packing.pad(packing.pack(x))
    assert torch.equal(back[mask.bool()], x[mask.bool()]) and back[~mask.bool()].abs().sum() == 0


def test_masked_forward_ignores_unpad(tmp_path: Path) -> None:
    """Per-row gates (the importance forward) keep the padded grid: the gates are per row, not per token."""
    model = dynsparse.from_pretrained(str(make_tiny("bert", tmp_path / "bert"))).eval()
    batch = dict(model.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    gates = torch.rand(len(TEXTS), 2, 64)
    with torch.inference_mode():
        a = model(**batch, structure=((4, 64),) * 2, neuron_mask=gates).logits
        b = model(**batch, structure=((4, 64),) * 2, neuron_mask=gates, unpad=True).logits
    assert torch.equal(a, b)


@gpu_test
def test_unpadded_forward_on_cuda_in_half_precision(tmp_path: Path) -> None:
    """The serving path on a GPU: float16, padded and unpadded agree on every real token."""
    model = dynsparse.from_pretrained(str(make_tiny("bert", tmp_path / "bert"))).eval().to("cuda").half()
    batch = {k: v.cuda() for k, v in model.tokenizer(TEXTS, padding=True, return_tensors="pt").items()}
    real = batch["attention_mask"].bool()
    with torch.inference_mode():
        for s in (0.0, 0.5, 0.9):
            padded = model(**batch, sparsity=s).last_hidden_state[real].float()
            packed = model(**batch, sparsity=s, unpad=True).last_hidden_state[real].float()
            assert torch.allclose(padded, packed, atol=2e-2, rtol=1e-2), s
