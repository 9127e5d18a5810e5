import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from svc_live import expected_probs

import dynsparse
from dynsparse.errors import InputError
from service.engine import Engine, pick_device, pick_dtype
from service.settings import Settings

TEXTS = ["w1 w2 w3", "w4 w5", "w6 w8 w10 w12 w14 w16 w18"]


@pytest.fixture(scope="module")
def engine(make_settings: Callable[..., Settings]) -> Engine:
    return Engine.load(make_settings(max_batch_size=2, max_tokens=16))


@pytest.mark.parametrize("s", [0.0, 0.5, 0.9])
def test_classify_equals_the_python_api(engine: Engine, reference: dynsparse.ElasticModel, s: float) -> None:
    (out,) = engine.run("classify", engine.structure(s), [TEXTS])
    assert not isinstance(out, InputError)
    probs = expected_probs(reference, TEXTS, s)
    assert [label for label, _ in out] == probs.argmax(-1).tolist()
    assert [score for _, score in out] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-5)


def test_embeddings_are_normalised_mean_pools(engine: Engine, reference: dynsparse.ElasticModel) -> None:
    (out,) = engine.run("embed", engine.structure(0.5), [TEXTS[:1]])
    assert not isinstance(out, InputError)
    ids = reference.tokenizer(TEXTS[:1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = F.normalize(reference.encode(ids, sparsity=0.5).mean(1), dim=-1)[0]
    assert torch.tensor(out[0]) == pytest.approx(want, abs=1e-5)
    assert torch.tensor(out[0]).norm().item() == pytest.approx(1.0, abs=1e-5)


def test_text_pairs_use_segment_ids(engine: Engine, reference: dynsparse.ElasticModel) -> None:
    (out,) = engine.run("classify", engine.structure(0.0), [[("w1 w2", "w3"), "w1 w2 w3"]])
    assert not isinstance(out, InputError)
    b = reference.tokenizer(["w1 w2"], ["w3"], return_tensors="pt")
    with torch.no_grad():
        p = reference(**b, sparsity=0.0).logits.softmax(-1)
    assert out[0][1] == pytest.approx(p.max().item(), abs=1e-5)


def test_an_over_long_request_fails_alone(engine: Engine) -> None:
    long_text = " ".join(f"w{i % 90}" for i in range(40))
    ok, bad = engine.run("classify", engine.structure(0.3), [TEXTS, [long_text]])
    assert isinstance(bad, InputError) and "16 tokens" in str(bad)
    assert not isinstance(ok, InputError) and len(ok) == len(TEXTS)


def test_structures_are_shared_and_nested(engine: Engine) -> None:
    assert engine.structure(0.5) is engine.structure(0.5)
    small, big = engine.structure(0.9), engine.structure(0.1)
    assert all(h1 <= h2 and n1 <= n2 for (h1, n1), (h2, n2) in zip(small, big, strict=True))


def test_profile_measures_every_point(engine: Engine) -> None:
    p = engine.profile([0.0, 0.9], [1, 2], [8, 1000])
    assert len(p.points) == 8 and all(pt.latency_ms > 0 for pt in p.points)
    assert max(pt.seq_len for pt in p.points) == engine.max_tokens  # lengths capped by the model


def test_device_and_dtype_choice() -> None:
    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_dtype("auto", torch.device("cpu")) in (torch.float32, torch.bfloat16)  # per CPU: test_precision
    assert pick_dtype("auto", torch.device("cuda")) == torch.float16
    with pytest.raises(InputError):
        pick_dtype("float16", torch.device("cpu"))
    with pytest.raises(InputError):
        pick_device("no-such-device")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            pick_device("cuda")


def test_a_bad_checkpoint_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such checkpoint"):
        Engine.load(Settings(checkpoint=tmp_path / "missing"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_half_precision_on_gpu_matches_cpu(make_settings: Callable[..., Settings], engine: Engine) -> None:
    gpu = Engine.load(make_settings(device="cuda"))
    assert gpu.dtype == torch.float16 and next(gpu.model.parameters()).dtype == torch.float16
    assert gpu.model.head_scores.dtype == torch.float32  # the ordering keeps full precision
    for s in (0.0, 0.5, 0.9):
        (on_gpu,) = gpu.run("classify", gpu.structure(s), [TEXTS])
        (on_cpu,) = engine.run("classify", engine.structure(s), [TEXTS])
        assert not isinstance(on_gpu, InputError) and not isinstance(on_cpu, InputError)
        assert [x[1] for x in on_gpu] == pytest.approx([x[1] for x in on_cpu], abs=1e-2)


def test_a_mixed_length_batch_runs_unpadded(
    engine: Engine, reference: dynsparse.ElasticModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's batches skip their padding (`dynsparse.packing`), with the padded forward's results."""
    import dynsparse.modeling

    packings: list[object] = []
    of = dynsparse.modeling.Packing.of

    def spy(mask: torch.Tensor, *args: float) -> object:
        packings.append(of(mask, *args))
        return packings[-1]

    monkeypatch.setattr(dynsparse.modeling.Packing, "of", spy)
    texts = ["w1", "w2 w3 w4 w5 w6 w7 w8 w9 w10 w11"]  # one short, one long: mostly padding
    (out,) = engine.run("classify", engine.structure(0.5), [texts])
    assert any(p is not None for p in packings)
    assert not isinstance(out, InputError)
    probs = expected_probs(reference, texts, 0.5)
    assert [score for _, score in out] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-5)


def test_traced_graphs_serve_what_eager_serves(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CPU the engine runs each size as a traced graph (`dynsparse.graphs`): the answers of eager forwards."""
    import dynsparse.graphs

    traced, eager = Engine.load(make_settings(traced_graphs=None)), Engine.load(make_settings(traced_graphs=False))
    assert traced.graphs is not None and eager.graphs is None
    traced.warmup([0.5])
    assert len(traced.graphs) == 4  # padded and not, for classify (the head's logits) and embed (the encoder's)

    def eager_forward(*args: object) -> None:
        raise AssertionError("a warmed size ran eagerly")

    monkeypatch.setattr(dynsparse.graphs._Size, "forward", eager_forward)  # the graphs run without it
    for task, groups in itertools.product(("classify", "embed"), ([TEXTS, ["w1", ("w2 w3", "w4")]], [["w5 w6"]])):
        want = eager.run(task, eager.structure(0.5), groups)  # a padded batch, then one without padding
        got = traced.run(task, traced.structure(0.5), groups)
        for g, w in zip(got, want, strict=True):
            assert not isinstance(g, InputError) and not isinstance(w, InputError)
            if task == "classify":
                assert [label for label, _ in g] == [label for label, _ in w]
                g, w = [score for _, score in g], [score for _, score in w]
            assert torch.tensor(g) == pytest.approx(torch.tensor(w), abs=1e-5)
