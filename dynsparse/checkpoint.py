"""The checkpoint: one directory, the only artifact.

    model.safetensors   rewired weights (our layout: units on dim 0) and the sorted importance scores
    config.json         the base encoder's transformers config (architecture rebuilt exactly), as the config of
                        the modeling code beside it (configuration_dynsparse.py, modeling_dynsparse.py) that
                        transformers runs with trust_remote_code and refuses without (`dynsparse.hf_config`)
    dynsparse.json      format version, family, task, labels, allocation, trained range, level table,
                        sha256 of model.safetensors
    tokenizer files     whatever the tokenizer's `save_pretrained` writes

Files are written to a temporary folder and moved into place one by one, `dynsparse.json` last: a
crash never leaves a checkpoint that loads with the wrong weights (its checksum would not match).
"""

import hashlib
import json
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from dynsparse.cost import embedding_params, head_cost, neuron_cost
from dynsparse.errors import CheckpointError
from dynsparse.family import family_for, shape_from_config
from dynsparse.heads import TASKS
from dynsparse.hf_config import base_config, is_remote, remote_config, write_remote
from dynsparse.modeling import ElasticModel

FORMAT_VERSION = 1
WEIGHTS, CONFIG, META = "model.safetensors", "config.json", "dynsparse.json"
REQUIRED = (WEIGHTS, CONFIG, META)
_MAX_JSON_BYTES = 32 << 20  # dynsparse.json and config.json hold a few KB; anything this big is not ours
_RAW_SIZES = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "embedding_size",
    "num_labels",
    "dim",
    "n_layers",
    "n_heads",
    "hidden_dim",
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(model: ElasticModel, path: str | os.PathLike[str]) -> None:
    """Write `model` as a checkpoint directory at `path` (created if needed; our files replaced)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".tmp-save-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        # floats are stored as float32 whatever the serving dtype; the vocabulary map stays integer
        state = {
            k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
            for k, v in model.state_dict().items()
        }
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "dynsparse_format": str(FORMAT_VERSION)})
        write_remote(remote_config(model), tmp)
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(tmp)
        meta = build_meta(model, sha256_file(tmp / WEIGHTS))
        (tmp / META).write_text(json.dumps(meta, indent=2))
        for f in sorted(tmp.iterdir(), key=lambda p: p.name == META):  # dynsparse.json last
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_meta(model: ElasticModel, weights_sha256: str) -> dict[str, Any]:
    meta = dict(model.meta)
    meta.update(
        format_version=FORMAT_VERSION,
        family=model.family.name,
        model_type=model.hf_config.model_type,
        task=meta.get("task", "text-classification"),
        labels=meta["labels"] if "labels" in meta else [str(i) for i in range(model.shape.num_labels)],
        allocation=model.allocation,
        ordering={
            "stored": "prefix",
            "scores": ["head_scores", "neuron_scores"],
            "estimator": (meta.get("ordering") or {}).get("estimator", "natural"),
            "mode": (meta.get("ordering") or {}).get("mode", "once-for-all"),
            **(
                {"languages": model.languages, "language_scores": ["language_head_scores", "language_neuron_scores"]}
                if model.languages
                else {}
            ),  # the non-shared setting: one more ordering per language
        },
        files={WEIGHTS: {"sha256": weights_sha256}},
    )
    meta.setdefault("sparsity_range", [0.0, 0.9])
    meta.setdefault("levels", [])
    return meta


def load_checkpoint(path: str | os.PathLike[str], device: str | None = None) -> ElasticModel:
    """Load a checkpoint directory; every problem is a `CheckpointError` naming the file.

    Example:
        >>> model = load_checkpoint("runs/default")
        >>> model(input_ids=ids, attention_mask=mask, sparsity=0.5).logits
    """
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such checkpoint directory")
    for name in REQUIRED:
        if not (root / name).is_file():
            raise CheckpointError(f"{root / name} is missing: a dynsparse checkpoint needs {', '.join(REQUIRED)}")
    meta = read_meta(root / META)
    expected = meta["files"][WEIGHTS]["sha256"]
    if sha256_file(root / WEIGHTS) != expected:
        raise CheckpointError(f"{root / WEIGHTS}: checksum does not match {META} (corrupt or replaced file)")
    with torch.device("meta"):  # shapes only: nothing is allocated before they are checked against the file
        model = _build(root, meta)
    state = _read_weights(root / WEIGHTS)
    _check_state(root / WEIGHTS, model, state)
    model.load_state_dict(state, strict=True, assign=True)  # the file's tensors become the parameters
    model.set_scores(model.head_scores.clone(), model.neuron_scores.clone())  # drop cached structures
    model.tokenizer = _load_tokenizer(root, model.hf_config)
    return model.to(device or "cpu").eval()


def read_meta(path: Path) -> dict[str, Any]:
    """Parse and validate dynsparse.json (types checked: the file may come from anyone)."""
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unknown format_version {version!r} (this dynsparse reads {FORMAT_VERSION})")
    expect: dict[str, type | tuple[type, ...]] = {
        "family": str,
        "labels": list,
        "allocation": str,
        "levels": list,
        "files": dict,
        "sparsity_range": list,
    }
    for key, kind in expect.items():
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{path}: field {key!r} is missing or not a {getattr(kind, '__name__', kind)}")
    if meta["allocation"] not in ("uniform", "global"):
        raise CheckpointError(f"{path}: allocation must be 'uniform' or 'global', got {meta['allocation']!r}")
    if not all(isinstance(x, str) for x in meta["labels"]):
        raise CheckpointError(f"{path}: labels must be a list of strings")
    rng = meta["sparsity_range"]
    if len(rng) != 2 or not all(isinstance(x, (int, float)) for x in rng) or not 0 <= rng[0] < rng[1] < 1:
        raise CheckpointError(f"{path}: sparsity_range must be [min, max] with 0 <= min < max < 1, got {rng!r:.100}")
    for row in meta["levels"]:
        s = row.get("sparsity", 0.0) if isinstance(row, dict) else None
        if not isinstance(s, int | float) or isinstance(s, bool) or not 0 <= s < 1:
            raise CheckpointError(f"{path}: levels must be objects with a sparsity in [0, 1), got {row!r:.100}")
    sha = meta["files"].get(WEIGHTS, {})
    if not isinstance(sha, dict) or not isinstance(sha.get("sha256"), str):
        raise CheckpointError(f"{path}: files.{WEIGHTS}.sha256 is missing")
    return meta


def read_json(path: Path) -> Any:
    """A JSON file that may come from anyone: bounded in size, nesting and number length; any failure is a
    `CheckpointError` naming the file."""
    size = path.stat().st_size
    if size > _MAX_JSON_BYTES:
        raise CheckpointError(f"{path}: {size} bytes, over the {_MAX_JSON_BYTES} a checkpoint's JSON file may hold")
    try:
        return json.loads(path.read_bytes())
    except RecursionError:
        raise CheckpointError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as e:  # bad syntax, not UTF-8, an integer of thousands of digits
        raise CheckpointError(f"{path}: not valid JSON ({str(e)[:200]})") from None


def _build(root: Path, meta: dict[str, Any]) -> ElasticModel:
    from transformers import AutoConfig

    stored = _stored_elements(root / WEIGHTS)
    raw = read_json(root / CONFIG)  # bounded first: transformers' own reader is not
    if not isinstance(raw, dict):
        raise CheckpointError(f"{root / CONFIG}: expected a JSON object, got {type(raw).__name__}")
    # before transformers sees them: it builds a label table of num_labels entries, whatever the number
    _check_sizes(root / CONFIG, {k: raw[k] for k in _RAW_SIZES if raw.get(k) is not None}, stored)
    try:  # a checkpoint written before the modeling code was shipped holds the base config as it is
        config = base_config(raw) if is_remote(raw) else AutoConfig.from_pretrained(root)
    except Exception as e:  # transformers raises many kinds on a hostile file (OSError, ValueError, its own)
        raise CheckpointError(f"{root / CONFIG}: cannot be read as a transformers config ({str(e)[:300]})") from None
    try:
        family = family_for(config.model_type)
        shape = shape_from_config(config)
    except (ValueError, TypeError, AttributeError, ZeroDivisionError) as e:
        raise CheckpointError(f"{root / CONFIG}: {str(e)[:300]}") from None
    dims = ("vocab_size", "hidden", "layers", "heads", "intermediate", "max_positions", "embedding_size", "num_labels")
    _check_sizes(root / CONFIG, {k: getattr(shape, k) for k in dims}, stored)
    layer = shape.heads * head_cost(shape) + shape.intermediate * neuron_cost(shape)
    rows = replace(shape, vocab_size=_kept_vocab(root / META, meta, shape.vocab_size))  # after vocabulary pruning
    needed = embedding_params(rows) + shape.layers * layer  # the head is checked tensor by tensor later
    if needed > stored:
        raise CheckpointError(f"{root / CONFIG}: describes {needed:,} encoder weights but {WEIGHTS} holds {stored:,}")
    if family.name != meta["family"]:
        raise CheckpointError(f"{root / META}: family {meta['family']!r} does not match {CONFIG} ({family.name})")
    if meta.get("task") != "feature-extraction" and len(meta["labels"]) != shape.num_labels:
        raise CheckpointError(f"{root / META}: {len(meta['labels'])} labels but {CONFIG} has {shape.num_labels}")
    _check_depth(root / META, meta.get("depth"), shape.layers)
    _check_languages(root / META, meta.get("ordering"))
    task = meta.get("task", "text-classification")
    if task not in TASKS:
        raise CheckpointError(f"{root / META}: unknown task {task!r} (this dynsparse knows {', '.join(TASKS)})")
    return ElasticModel(shape, family, config, meta["allocation"], meta=meta, task=task)


def _check_depth(path: Path, depth: Any, layers: int) -> None:
    """The elastic-depth record, when present: an order ranking each layer once, a minimum within the layers."""
    if depth is None:
        return
    if not isinstance(depth, dict):
        raise CheckpointError(f"{path}: depth must be an object, got {type(depth).__name__}")
    order, least = depth.get("order"), depth.get("min_layers", layers)
    if order is not None and (
        not isinstance(order, list)
        or sorted(map(str, order)) != sorted(map(str, range(layers)))
        or not all(type(i) is int for i in order)
    ):
        raise CheckpointError(f"{path}: depth.order must rank each of the {layers} layers once, got {order!r:.100}")
    if type(least) is not int or not 1 <= least <= layers:
        raise CheckpointError(f"{path}: depth.min_layers must be an integer from 1 to {layers}, got {least!r:.50}")


def _check_languages(path: Path, ordering: Any) -> None:
    """Per-language orderings, when present: a short list of distinct short names."""
    if ordering is not None and not isinstance(ordering, dict):
        raise CheckpointError(f"{path}: ordering must be an object, got {type(ordering).__name__}")
    langs = ordering.get("languages") if isinstance(ordering, dict) else None
    if langs is None:
        return
    if (
        not isinstance(langs, list)
        or not 1 <= len(langs) <= 256
        or len(set(map(str, langs))) != len(langs)
        or not all(isinstance(x, str) and 0 < len(x) <= 64 for x in langs)
    ):
        raise CheckpointError(f"{path}: ordering.languages must be up to 256 distinct names, got {langs!r:.100}")


def _kept_vocab(path: Path, meta: dict[str, Any], vocab_size: int) -> int:
    """Rows of the word embeddings: the tokens kept by vocabulary pruning, else the whole vocabulary."""
    vocab = meta.get("vocabulary")
    if vocab is None:
        return vocab_size
    kept = vocab.get("kept") if isinstance(vocab, dict) else None
    if not isinstance(kept, int) or isinstance(kept, bool) or not 1 <= kept <= vocab_size:
        raise CheckpointError(f"{path}: vocabulary.kept must be an integer from 1 to {vocab_size}, got {kept!r:.50}")
    return kept


def _stored_elements(path: Path) -> int:
    """Elements of every tensor in a safetensors file, from its header alone (nothing is loaded)."""
    try:
        with safe_open(str(path), "pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def _check_sizes(path: Path, sizes: dict[str, Any], stored: int) -> None:
    """Each size a positive integer (token types may be 0) no larger than the number of elements the weights file
    holds, so a hostile config.json cannot ask for terabytes before the shapes are compared."""

    def fits(name: str, v: Any) -> bool:
        least = 0 if name == "type_vocab_size" else 1
        return isinstance(v, int) and not isinstance(v, bool) and least <= v <= stored

    bad = {k: v for k, v in sizes.items() if not fits(k, v)}
    if bad:
        shown = {k: v if not isinstance(v, int) or v < 10**15 else "huge" for k, v in bad.items()}
        raise CheckpointError(f"{path}: sizes must be positive integers up to {stored:,}, got {shown!r:.200}")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file, corrupt or truncated ({e})") from None


def _check_state(path: Path, model: ElasticModel, state: dict[str, torch.Tensor]) -> None:
    want = model.state_dict()
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing and all(k.startswith("language_") for k in missing):
        langs = str(model.languages)[:200]
        raise CheckpointError(f"{path}: holds no per-language scores, but {META} lists languages {langs}")
    if missing or extra:
        raise CheckpointError(f"{path}: tensors missing {missing[:3]} / unexpected {extra[:3]} for {CONFIG}")
    for name, t in state.items():
        if t.shape != want[name].shape:
            raise CheckpointError(
                f"{path}: tensor {name} has shape {tuple(t.shape)}, {CONFIG} needs {tuple(want[name].shape)}"
            )
        if t.dtype != want[name].dtype:  # the file's tensors are used as they are (assign=True)
            raise CheckpointError(f"{path}: tensor {name} is {t.dtype}, expected {want[name].dtype}")
    for name in ("head_scores", "neuron_scores", "language_head_scores", "language_neuron_scores"):
        if name in state and not bool(torch.isfinite(state[name]).all()):  # orderings sort by them
            raise CheckpointError(f"{path}: tensor {name} holds NaN or infinite scores")
    vocab_map = state.get("embeddings.vocab_map")
    rows = want["embeddings.word.weight"].shape[0]
    if vocab_map is not None and vocab_map.numel() and not 0 <= int(vocab_map.min()) <= int(vocab_map.max()) < rows:
        raise CheckpointError(f"{path}: embeddings.vocab_map points outside the {rows} kept tokens")


def _load_tokenizer(root: Path, config: Any) -> Any:
    from transformers import AutoTokenizer

    try:  # the base config given: AutoTokenizer would read config.json, whose code it must not run
        return AutoTokenizer.from_pretrained(root, config=config)
    except Exception as e:  # transformers raises many kinds on hostile files (RecursionError, AttributeError, ...)
        raise CheckpointError(f"{root}: tokenizer files missing or unreadable ({str(e)[:300]})") from None
