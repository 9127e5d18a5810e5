"""Weight import from transformers checkpoints (any supported family), through transformers' own loader.

transformers resolves the path or hub id, reads safetensors/bin shards and initialises a missing
classifier; we only rename (and transpose the two output projections) via the family's name table.
"""

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dynsparse.config import Allocation
from dynsparse.errors import InputError
from dynsparse.family import Family, family_for, shape_from_config
from dynsparse.modeling import ElasticModel
from dynsparse.tasks import task_spec

log = logging.getLogger(__name__)

_LAYER_PARAMS = (  # (ours, LayerNames field, transposed)
    ("q_weight", "query.weight", False),
    ("q_bias", "query.bias", False),
    ("k_weight", "key.weight", False),
    ("k_bias", "key.bias", False),
    ("v_weight", "value.weight", False),
    ("v_bias", "value.bias", False),
    ("attn_out_weight_t", "attn_out.weight", True),
    ("attn_out_bias", "attn_out.bias", False),
    ("attn_norm.weight", "attn_norm.weight", False),
    ("attn_norm.bias", "attn_norm.bias", False),
    ("ffn_in_weight", "ffn_in.weight", False),
    ("ffn_in_bias", "ffn_in.bias", False),
    ("ffn_out_weight_t", "ffn_out.weight", True),
    ("ffn_out_bias", "ffn_out.bias", False),
    ("ffn_norm.weight", "ffn_norm.weight", False),
    ("ffn_norm.bias", "ffn_norm.bias", False),
)


def name_pairs(
    family: Family, layers: int, type_vocab: bool, project: bool, task: str = "text-classification"
) -> Iterator[tuple[str, str, bool]]:
    """(our name, transformers name, transposed) for every weight of the task's transformers model."""
    e = family.embeddings
    yield from (
        ("embeddings.word.weight", e + "word_embeddings.weight", False),
        ("embeddings.position.weight", e + "position_embeddings.weight", False),
        ("embeddings.norm.weight", e + "LayerNorm.weight", False),
        ("embeddings.norm.bias", e + "LayerNorm.bias", False),
    )
    if type_vocab:
        yield "embeddings.token_type.weight", e + "token_type_embeddings.weight", False
    if project and family.embed_project:
        for p in ("weight", "bias"):
            yield f"embeddings.project.{p}", f"{family.embed_project}.{p}", False
    for i in range(layers):
        prefix = family.layers.prefix.format(i=i)
        for ours, field_and_param, transposed in _LAYER_PARAMS:
            field, param = field_and_param.split(".")
            yield f"layers.{i}.{ours}", f"{prefix}{getattr(family.layers, field)}.{param}", transposed
    for ours, theirs in task_spec(task).head_weights(family):
        for p in ("weight", "bias"):
            yield f"{ours}.{p}", f"{theirs}.{p}", False


def import_weights(model: ElasticModel, hf_state: dict[str, Tensor]) -> None:
    """Copy a transformers state dict into `model` (exact shapes required)."""
    s = model.shape
    pairs = name_pairs(model.family, s.layers, s.type_vocab > 0, s.embedding_size != s.hidden, model.task)
    ours = {o: (hf_state[t].T if tr else hf_state[t]) for o, t, tr in pairs}
    missing, unexpected = model.load_state_dict({k: v.contiguous() for k, v in ours.items()}, strict=False)
    missing = [k for k in missing if not k.endswith("_scores")]
    if missing or unexpected:
        raise InputError(f"weight import incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")


def load_hf_config(name_or_path: str, **overrides: Any) -> Any:
    """transformers' config of a model, with a one-line error for a bad path or unsupported type."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path, **overrides)
    except (OSError, ValueError) as e:
        if _looks_like_path(name_or_path) and not Path(name_or_path).exists():
            raise InputError(f"model path {name_or_path!r} does not exist") from None
        where = "directory" if Path(name_or_path).exists() else "hub id"
        raise InputError(f"cannot load a model config from {where} {name_or_path!r}: {_first_line(e)}") from None
    family_for(config.model_type)  # raises for unsupported architectures
    return config


def load_tokenizer(name_or_path: str, model_type: str = "", task: str = "text-classification") -> Any:
    from transformers import AutoTokenizer

    # byte-level BPE needs a prefix space to tokenise pre-split words as inside a sentence (as run_ner.py does)
    extra = {"add_prefix_space": True} if model_type == "roberta" and task == "token-classification" else {}
    try:
        return AutoTokenizer.from_pretrained(name_or_path, **extra)
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"cannot load a tokenizer from {name_or_path!r}: {_first_line(e)}") from None


def from_pretrained(
    name_or_path: str,
    labels: list[str] | None = None,
    allocation: Allocation = "uniform",
    tokenizer: bool = True,
    task: str = "text-classification",
) -> ElasticModel:
    """Wrap a transformers checkpoint as an `ElasticModel` with the natural (untrained) ordering.

    At sparsity 0 it gives the outputs of the task's transformers model (`AutoModelFor<task>`). `labels` sets
    the classifier's label names (a new head is initialised when the checkpoint has none or another count).
    """
    import transformers
    from transformers.utils import logging as hf_logging

    spec = task_spec(task)

    overrides: dict[str, Any] = {}
    if task == "question-answering":  # start and end logits
        overrides = {"num_labels": 2, "id2label": {0: "start", 1: "end"}, "label2id": {"start": 0, "end": 1}}
    if labels is not None and task in ("text-classification", "token-classification"):
        overrides = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)},
        }
    config = load_hf_config(name_or_path, **overrides)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # transformers' load report and bar would drown our one-line log
    hf_logging.disable_progress_bar()
    try:
        auto = getattr(transformers, spec.auto_class)
        hf = auto.from_pretrained(name_or_path, config=config, ignore_mismatched_sizes=labels is not None)
    except (OSError, ValueError, RuntimeError) as e:
        raise InputError(f"cannot load weights from {name_or_path!r}: {_first_line(e)}") from None
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()
    model = ElasticModel(shape_from_config(config), family_for(config.model_type), config, allocation, task=task)
    state = hf.state_dict()
    if task == "feature-extraction":  # the bare encoder's names lack the prefix the task models have
        state = {f"{hf.base_model_prefix}.{k}": v for k, v in state.items()}
    with torch.no_grad():
        import_weights(model, state)
    model.tokenizer = load_tokenizer(name_or_path, config.model_type, task) if tokenizer else None
    model.meta = replace(model.meta, base_model=str(name_or_path), labels=tuple(_labels(config, task)))
    log.info("loaded %s (%s, %d layers)", name_or_path, config.model_type, config.num_hidden_layers)
    return model.eval()


def _labels(config: Any, task: str) -> list[str]:
    """The head's output names: label names, ["start", "end"] for spans, none for embeddings."""
    if task == "feature-extraction":
        return []
    if task == "question-answering":
        return ["start", "end"]
    return [config.id2label[i] for i in range(config.num_labels)]


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
