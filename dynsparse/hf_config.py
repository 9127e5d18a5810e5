"""`config.json` as transformers reads it: a checkpoint that carries its own modeling code.

A checkpoint's (and a non-stock transformers export's) `config.json` is the base encoder's config (what
`save_pretrained` writes) with three changes, so that transformers never builds a stock model around weights
it cannot read:

    model_type       "dynsparse": without `trust_remote_code` transformers refuses to load it (its own error)
    base_model_type  the base encoder's model_type ("bert", "xlm-roberta", ...): dynsparse rebuilds it exactly
    auto_map         `configuration_dynsparse.DynsparseConfig` and the task's class in `modeling_dynsparse.py`,
                     both files written beside it (`dynsparse.hf_remote`)
    dynsparse        what that code needs: shape, task, allocation, depth order, fixed layer sizes

Checkpoints written before this (model_type of the base) still load with `dynsparse.load`.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dynsparse.hf_remote import CLASSES, CODE_FILES, HERE
from dynsparse.masks import Structure

if TYPE_CHECKING:  # types only: this module is imported by the one it names
    from dynsparse.modeling import ElasticModel

REMOTE_TYPE = "dynsparse"
_OURS = ("base_model_type", "auto_map", "dynsparse", "sparsity", "depth", "architectures")


def remote_config(model: ElasticModel, layer_sizes: Structure | None = None) -> dict[str, Any]:
    """The config.json of `model` (elastic), or of one fixed size of it (`layer_sizes`: kept layers only)."""
    base = model.hf_config
    raw = json.loads(base.to_json_string(use_diff=True))
    auto, cls = CLASSES[model.task]
    labels = list(model.meta.labels or ())
    if model.task in ("text-classification", "token-classification") and labels:
        raw["id2label"] = dict(enumerate(labels))
        raw["label2id"] = {name: i for i, name in enumerate(labels)}
    raw.update(
        model_type=REMOTE_TYPE,
        base_model_type=base.model_type,
        architectures=[cls],
        auto_map={
            "AutoConfig": "configuration_dynsparse.DynsparseConfig",
            "AutoModel": "modeling_dynsparse.DynsparseModel",
            auto: f"modeling_dynsparse.{cls}",
        },
        dynsparse={
            "task": model.task,
            "shape": asdict(model.shape),  # the names modeling_dynsparse.py reads
            "padded_positions": model.family.padded_positions,
            "pool_act": model.family.pool_act,
            "kept_vocab": model.meta.vocabulary.kept if model.meta.vocabulary else None,
            "allocation": model.allocation,
            "layer_order": list(model.layer_order),
            "layer_sizes": [list(hn) for hn in layer_sizes] if layer_sizes is not None else None,
        },
    )
    return raw


def write_remote(raw: dict[str, Any], out: Path) -> None:
    """Write config.json and the modeling code it names into `out`."""
    (out / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    for name in CODE_FILES:
        shutil.copyfile(HERE / name, out / name)


def is_remote(raw: dict[str, Any]) -> bool:
    return raw.get("model_type") == REMOTE_TYPE


def base_config(raw: dict[str, Any]) -> Any:
    """The base encoder's transformers config from a config.json dict, either layout.

    Raises:
        ValueError: transformers does not know the base model type (or rejects a field).
    """
    from transformers import AutoConfig

    fields = {k: v for k, v in copy.deepcopy(raw).items() if k not in _OURS and k != "model_type"}
    base_type = raw.get("base_model_type") if is_remote(raw) else raw.get("model_type")
    if not isinstance(base_type, str):
        raise ValueError(f"no base model type (base_model_type), got {base_type!r:.50}")
    fields.pop("transformers_version", None)
    return AutoConfig.for_model(base_type, **fields)
