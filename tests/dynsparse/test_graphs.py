"""Traced graphs per size: eager's outputs on shapes they were never traced on, over the model's own weights."""

import pytest
import torch
from conftest import make_tiny

import dynsparse
from dynsparse.graphs import GraphKey, SizeGraphs
from dynsparse.modeling import ElasticModel


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> ElasticModel:
    path = make_tiny("bert", tmp_path_factory.mktemp("graphs") / "bert")
    return dynsparse.from_pretrained(str(path)).eval()


def _batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 90, (len(lengths), max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return ids, mask


SHAPES = [[7, 2, 5], [12, 1], [3], [9, 9, 9, 9], [15, 4, 4, 8, 1, 11]]  # none is the (2, 8) traced on


@pytest.mark.parametrize("s", [0.0, 0.5, 0.9])
def test_graphs_give_eager_outputs_on_unseen_shapes(model: ElasticModel, s: float) -> None:
    graphs, structure = SizeGraphs(model), model.structure(s)
    graphs.warm(structure)
    graphs.warm(structure, head=True)
    assert len(graphs) == 4  # padded and unpadded, encoder and head
    with torch.inference_mode():
        for lengths in SHAPES:
            ids, mask = _batch(lengths)
            real = mask.bool()
            want = model(ids, mask, structure=structure, unpad=True)
            hidden = graphs.run(ids, mask, None, structure)
            assert hidden.shape == want.last_hidden_state.shape
            assert torch.allclose(hidden[real], want.last_hidden_state[real], atol=1e-5), lengths
            logits = graphs.run(ids, mask, None, structure, head=True)
            assert torch.allclose(logits, want.logits, atol=1e-5), lengths
    assert len(graphs) == 4  # new shapes made no new graphs


def test_segment_ids_depth_and_languages_are_their_own_graphs(model: ElasticModel) -> None:
    g = torch.Generator().manual_seed(0)
    model.set_language_scores(["de", "en"], torch.rand(2, 2, 4, generator=g), torch.rand(2, 2, 64, generator=g))
    graphs = SizeGraphs(model, trace_after=1)
    ids, mask = _batch([6, 3])
    types = (torch.arange(ids.shape[1]) >= 3).long().expand_as(ids)
    with torch.inference_mode():
        for structure, language in ((model.structure(0.5, depth=1), None), (model.structure(0.5, None, "de"), "de")):
            want = model(ids, mask, types, structure=structure, language=language, unpad=True).logits
            got = graphs.run(ids, mask, types, structure, language, head=True)
            assert torch.allclose(got, want, atol=1e-5)
    assert len(graphs) == 2


def test_graphs_hold_no_weights_of_their_own(model: ElasticModel) -> None:
    graphs, structure = SizeGraphs(model), model.structure(0.5)
    graphs.warm(structure)
    graph = graphs.graph(GraphKey(structure, None, False, True, False))
    ours = {p.data_ptr() for p in model.parameters()}
    assert {p.data_ptr() for p in graph.parameters()} == ours
    with torch.no_grad():  # a change to the model's weights is what the graph runs next
        ids, mask = _batch([5, 2])
        before = graphs.run(ids, mask, None, structure)
        model.embeddings.word.weight.mul_(2)
        after = graphs.run(ids, mask, None, structure)
        model.embeddings.word.weight.div_(2)
    assert not torch.allclose(before, after)


def test_one_off_keys_stay_eager_and_the_count_is_bounded(model: ElasticModel) -> None:
    graphs = SizeGraphs(model, trace_after=2, capacity=2)
    ids, mask = _batch([4, 2])
    sizes = [model.structure(s) for s in (0.1, 0.2, 0.3)]
    with torch.inference_mode():
        graphs.run(ids, mask, None, sizes[0])
        assert len(graphs) == 0  # a size seen once runs eagerly
        for structure in sizes:
            graphs.run(ids, mask, None, structure)
            graphs.run(ids, mask, None, structure)
    assert len(graphs) == 2  # the capacity: the third size kept running eagerly


def test_a_size_whose_trace_fails_runs_eagerly(
    model: ElasticModel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("tracer says no")

    monkeypatch.setattr(torch.jit, "trace", broken)
    graphs, structure = SizeGraphs(model), model.structure(0.5)
    graphs.warm(structure)
    assert len(graphs) == 0 and "tracer says no" in caplog.text
    ids, mask = _batch([6, 2])
    with torch.inference_mode():
        want = model.encode(ids, mask, structure=structure, unpad=True)
        assert torch.equal(graphs.run(ids, mask, None, structure), want)
