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

import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from dynsparse.cost import embedding_params, head_cost, neuron_cost
from dynsparse.errors import CheckpointError
from dynsparse.family import family_for, shape_from_config
from dynsparse.hf_config import base_config, is_remote
from dynsparse.metadata import CheckpointMeta, Vocabulary
from dynsparse.modeling import ElasticModel
from dynsparse.tasks import TASKS
from dynsparse.writer import CONFIG, META, REQUIRED, WEIGHTS, sha256_file

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


def load_checkpoint(path: str | os.PathLike[str], device: str | None = None) -> ElasticModel:
    """Load a checkpoint directory; every problem is a `CheckpointError` naming the file.

    Example:
        >>> model = load_checkpoint("runs/default")
        >>> model(input_ids=ids, attention_mask=mask, sparsity=0.5).logits
    """
    root = Path(path)
    meta = check_layout(root)
    if sha256_file(root / WEIGHTS) != meta.weights_sha256:
        raise CheckpointError(f"{root / WEIGHTS}: checksum does not match {META} (corrupt or replaced file)")
    with torch.device("meta"):  # shapes only: nothing is allocated before they are checked against the file
        model = _build(root, meta)
    state = _read_weights(root / WEIGHTS)
    _check_state(root / WEIGHTS, model, state)
    model.load_state_dict(state, strict=True, assign=True)  # the file's tensors become the parameters
    model.set_scores(model.head_scores.clone(), model.neuron_scores.clone())  # drop cached structures
    model.tokenizer = _load_tokenizer(root, model.hf_config)
    return model.to(device or "cpu").eval()


def check_layout(root: Path) -> CheckpointMeta:
    """The checks before any weight is read (`dynsparse serve` runs them before the server starts): a
    directory holding the required files, and a valid dynsparse.json, returned."""
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such checkpoint directory")
    for name in REQUIRED:
        if not (root / name).is_file():
            raise CheckpointError(f"{root / name} is missing: a dynsparse checkpoint needs {', '.join(REQUIRED)}")
    return read_meta(root / META)


def read_meta(path: Path) -> CheckpointMeta:
    """Parse and validate dynsparse.json (types checked: the file may come from anyone)."""
    return CheckpointMeta.from_json(read_json(path), path)


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


def _build(root: Path, meta: CheckpointMeta) -> ElasticModel:
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
    rows = replace(
        shape, vocab_size=_kept_vocab(root / META, meta.vocabulary, shape.vocab_size)
    )  # after vocabulary pruning
    needed = embedding_params(rows) + shape.layers * layer  # the head is checked tensor by tensor later
    if needed > stored:
        raise CheckpointError(f"{root / CONFIG}: describes {needed:,} encoder weights but {WEIGHTS} holds {stored:,}")
    if family.name != meta.family:
        raise CheckpointError(f"{root / META}: family {meta.family!r} does not match {CONFIG} ({family.name})")
    labels = meta.labels or ()
    if meta.task != "feature-extraction" and len(labels) != shape.num_labels:
        raise CheckpointError(f"{root / META}: {len(labels)} labels but {CONFIG} has {shape.num_labels}")
    if meta.depth is not None:
        try:
            meta.depth.check_layers(shape.layers)
        except ValueError as e:
            raise CheckpointError(f"{root / META}: {e}") from None
    if meta.task not in TASKS:
        raise CheckpointError(f"{root / META}: unknown task {meta.task!r} (this dynsparse knows {', '.join(TASKS)})")
    return ElasticModel(shape, family, config, meta.allocation, meta=meta, task=meta.task)  # type: ignore[arg-type]


def _kept_vocab(path: Path, vocab: Vocabulary | None, vocab_size: int) -> int:
    """Rows of the word embeddings: the tokens kept by vocabulary pruning, else the whole vocabulary."""
    if vocab is None:
        return vocab_size
    if vocab.kept > vocab_size:
        raise CheckpointError(f"{path}: vocabulary.kept must be an integer from 1 to {vocab_size}, got {vocab.kept}")
    return vocab.kept


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
