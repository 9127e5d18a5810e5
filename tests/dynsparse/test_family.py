from pathlib import Path

import pytest
import torch
from conftest import FAMILIES
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import dynsparse
from dynsparse.errors import InputError
from dynsparse.family import family_for


@pytest.mark.parametrize("family", FAMILIES)
def test_dense_matches_transformers_with_padding_and_pairs(tiny_dir: Path, family: str) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_dir / family)
    ref = AutoModelForSequenceClassification.from_pretrained(tiny_dir / family).eval()
    ours = dynsparse.from_pretrained(str(tiny_dir / family)).eval()
    batch = tok(["w1 w2 w3 w4 w5 w6 w7", "w8"], ["w9 w10", "w11 w12 w13"], padding=True, return_tensors="pt")
    assert batch["attention_mask"].eq(0).any()  # padding really is in the batch
    with torch.no_grad():
        diff = (ours(**batch, sparsity=0.0).logits - ref(**batch).logits).abs().max().item()
    assert diff < 1e-4


def test_unsupported_architecture_is_named() -> None:
    with pytest.raises(InputError, match="unsupported architecture 'gpt2'.*bert"):
        family_for("gpt2")


def test_from_pretrained_rejects_missing_path() -> None:
    with pytest.raises(InputError, match="does not exist"):
        dynsparse.from_pretrained("/no/such/model")


def test_new_labels_initialise_a_fresh_classifier(tiny_dir: Path) -> None:
    model = dynsparse.from_pretrained(str(tiny_dir / "bert"), labels=["neg", "neutral", "pos"])
    ids = torch.tensor([[3, 10, 11, 4]])
    assert model(input_ids=ids).logits.shape == (1, 3)
    assert model.meta.labels == ("neg", "neutral", "pos")
