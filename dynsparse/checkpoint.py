"""The checkpoint: one directory, the only artifact.

    model.safetensors   rewired weights (our layout: units on dim 0) and the sorted importance scores
    config.json         the base encoder's transformers config (architecture rebuilt exactly)
    dynsparse.json      format version, family, task, labels, allocation, trained range, level table,
                        sha256 of model.safetensors
    tokenizer files     whatever the tokenizer's `save_pretrained` writes

Files are written to a temporary folder and moved into place one by one, `dynsparse.json` last: a
crash never leaves a checkpoint that loads with the wrong weights (its checksum would not match).
"""

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dynsparse.errors import CheckpointError
from dynsparse.family import family_for, shape_from_config
from dynsparse.modeling import ElasticModel

FORMAT_VERSION = 1
WEIGHTS, CONFIG, META = "model.safetensors", "config.json", "dynsparse.json"
REQUIRED = (WEIGHTS, CONFIG, META)


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
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "dynsparse_format": str(FORMAT_VERSION)})
        model.hf_config.save_pretrained(tmp)
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
        labels=meta.get("labels") or [str(i) for i in range(model.shape.num_labels)],
        allocation=model.allocation,
        ordering={"stored": "prefix", "scores": ["head_scores", "neuron_scores"],
                  "estimator": meta.get("ordering", {}).get("estimator", "natural")},  # fmt: skip
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
    model = _build(root, meta)
    state = _read_weights(root / WEIGHTS)
    _check_state(root / WEIGHTS, model, state)
    model.load_state_dict(state, strict=True)
    model.set_scores(model.head_scores.clone(), model.neuron_scores.clone())  # drop cached structures
    model.tokenizer = _load_tokenizer(root)
    return model.to(device or "cpu").eval()


def read_meta(path: Path) -> dict[str, Any]:
    """Parse and validate dynsparse.json (types checked: the file may come from anyone)."""
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unknown format_version {version!r} (this dynsparse reads {FORMAT_VERSION})")
    expect: dict[str, type | tuple[type, ...]] = {"family": str, "labels": list, "allocation": str, "levels": list,
                                                  "files": dict, "sparsity_range": list}  # fmt: skip
    for key, kind in expect.items():
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{path}: field {key!r} is missing or not a {getattr(kind, '__name__', kind)}")
    if meta["allocation"] not in ("uniform", "global"):
        raise CheckpointError(f"{path}: allocation must be 'uniform' or 'global', got {meta['allocation']!r}")
    if not all(isinstance(x, str) for x in meta["labels"]):
        raise CheckpointError(f"{path}: labels must be a list of strings")
    rng = meta["sparsity_range"]
    if len(rng) != 2 or not all(isinstance(x, (int, float)) for x in rng) or not 0 <= rng[0] < rng[1] < 1:
        raise CheckpointError(f"{path}: sparsity_range must be [min, max] with 0 <= min < max < 1, got {rng!r}")
    sha = meta["files"].get(WEIGHTS, {})
    if not isinstance(sha, dict) or not isinstance(sha.get("sha256"), str):
        raise CheckpointError(f"{path}: files.{WEIGHTS}.sha256 is missing")
    return meta


def _build(root: Path, meta: dict[str, Any]) -> ElasticModel:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(root)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{root / CONFIG}: cannot be read as a transformers config ({e})") from None
    try:
        family = family_for(config.model_type)
        shape = shape_from_config(config)
    except ValueError as e:
        raise CheckpointError(f"{root / CONFIG}: {e}") from None
    if family.name != meta["family"]:
        raise CheckpointError(f"{root / META}: family {meta['family']!r} does not match {CONFIG} ({family.name})")
    if len(meta["labels"]) != shape.num_labels:
        raise CheckpointError(f"{root / META}: {len(meta['labels'])} labels but {CONFIG} has {shape.num_labels}")
    return ElasticModel(shape, family, config, meta["allocation"], meta=meta)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file, corrupt or truncated ({e})") from None


def _check_state(path: Path, model: ElasticModel, state: dict[str, torch.Tensor]) -> None:
    want = model.state_dict()
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or extra:
        raise CheckpointError(f"{path}: tensors missing {missing[:3]} / unexpected {extra[:3]} for {CONFIG}")
    for name, t in state.items():
        if t.shape != want[name].shape:
            raise CheckpointError(
                f"{path}: tensor {name} has shape {tuple(t.shape)}, {CONFIG} needs {tuple(want[name].shape)}"
            )


def _load_tokenizer(root: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(root)
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{root}: tokenizer files missing or unreadable ({e})") from None
