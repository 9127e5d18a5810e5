import copy
import time
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import dynsparse
from dynsparse.errors import InputError
from dynsparse.masks import prefix_masks
from dynsparse.rewire import rewire, unit_order

LEVELS = [i / 20 for i in range(19)]


@pytest.fixture()
def model_and_batch(tiny_dir: Path) -> tuple[dynsparse.ElasticModel, dict[str, torch.Tensor]]:
    model = dynsparse.from_pretrained(str(tiny_dir / "roberta")).eval()
    batch = model.tokenizer(["w1 w2 w3 w4 w5 w6", "w7 w8", "w9 w10 w11"], padding=True, return_tensors="pt")
    return model, dict(batch)


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_sliced_equals_masked_after_rewiring(model_and_batch: tuple, allocation: str) -> None:
    model, batch = model_and_batch
    g = torch.Generator().manual_seed(0)
    head_scores, neuron_scores = torch.rand(2, 4, generator=g), torch.rand(2, 64, generator=g)
    original = copy.deepcopy(model)
    rewire(model, head_scores, neuron_scores)
    model.set_allocation(allocation)
    h_order, n_order = unit_order(head_scores), unit_order(neuron_scores)
    for s in LEVELS:
        structure = model.structure(s)
        hm, nm = prefix_masks(structure, 4, 64)  # masks in the rewired order -> map back to original units
        hm_orig = torch.zeros_like(hm).scatter_(1, h_order, hm)
        nm_orig = torch.zeros_like(nm).scatter_(1, n_order, nm)
        with torch.no_grad():
            sliced = model(**batch, sparsity=s).logits
            masked = original(**batch, structure=((4, 64),) * 2, head_mask=hm_orig, neuron_mask=nm_orig).logits
        assert torch.allclose(sliced, masked, atol=1e-5), s


def test_size_switch_moves_no_storage(model_and_batch: tuple) -> None:
    model, batch = model_and_batch
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    with torch.no_grad():
        outs = [model(**batch, sparsity=s).logits for s in (0.0, 0.5, 0.9, 0.0)]
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == ptrs
    assert torch.equal(outs[0], outs[3]) and not torch.allclose(outs[0], outs[2])


def test_sparsity_out_of_range_is_refused(model_and_batch: tuple) -> None:
    model, batch = model_and_batch
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(InputError, match="sparsity must be"):
            model(**batch, sparsity=bad)
    with pytest.raises(InputError, match="non-empty"):
        model(input_ids=torch.zeros(0, 4, dtype=torch.long))


def test_latency_falls_with_sparsity() -> None:
    """A ratio measured in one run (not an absolute time): prefix slices really shrink the matmuls."""
    hf = BertForSequenceClassification(
        BertConfig(hidden_size=256, num_hidden_layers=2, num_attention_heads=8, intermediate_size=1024, vocab_size=500)
    )
    from dynsparse.family import family_for, shape_from_config
    from dynsparse.modeling import ElasticModel
    from dynsparse.pretrained import import_weights

    model = ElasticModel(shape_from_config(hf.config), family_for("bert"), hf.config).eval()
    import_weights(model, hf.state_dict())
    ids = torch.randint(5, 500, (8, 128))

    def best(s: float) -> float:
        with torch.inference_mode():
            model(input_ids=ids, sparsity=s)
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                model(input_ids=ids, sparsity=s)
                times.append(time.perf_counter() - t0)
        return min(times)

    assert best(0.0) > 1.5 * best(0.75)
