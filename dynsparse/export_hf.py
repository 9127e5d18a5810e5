"""One size as a transformers (and sentence-transformers) model directory, and the config beside an ONNX export.

`dynsparse export CKPT --sparsity s --format transformers --output DIR` writes:

    model.safetensors, config.json   a *stock* model (`BertForSequenceClassification`, ...) where a stock config
                                     can say the size: every layer keeps all its heads and the same FFN width
                                     (intermediate_size = that width; layers dropped by depth are left out; a
                                     pruned vocabulary is expanded back, dropped tokens reading unk's row).
                                     Otherwise the weights in dynsparse's layout with `modeling_dynsparse.py`
                                     (auto_map; `trust_remote_code=True`) fixed at the size.
    tokenizer files
    modules.json, sentence_bert_config.json, 1_Pooling/   feature-extraction only: sentence-transformers' mean
                                     pooling and Normalize, the vectors of /v1/embed at s
    dynsparse_export.json            as for every export

Either way `AutoModelFor<Task>.from_pretrained(DIR)` (plus `trust_remote_code=True` when not stock) gives the
checkpoint's outputs at s.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import save_file
from torch import Tensor

from dynsparse.hf_config import remote_config, write_remote
from dynsparse.masks import Structure
from dynsparse.modeling import ElasticModel
from dynsparse.pretrained import name_pairs
from dynsparse.tasks import task_spec

if TYPE_CHECKING:  # types only: this module is imported by the one it names
    from dynsparse.export import FixedSizeModel

WEIGHTS = "model.safetensors"


def is_stock(model: ElasticModel, structure: Structure) -> bool:
    """Whether a stock transformers config says this size: all heads and one FFN width in every layer kept."""
    return all(h == model.shape.heads for h, _ in structure) and len({n for _, n in structure}) == 1


def stock_config(model: ElasticModel, layers: int, width: int) -> Any:
    """The base config with `layers` layers of FFN width `width`, the task's class and the label names."""
    import transformers

    config = copy.deepcopy(model.hf_config)
    if config.model_type == "distilbert":
        config.n_layers, config.hidden_dim = layers, width
    else:
        config.num_hidden_layers, config.intermediate_size = layers, width
    labels = list(model.meta.labels or ())
    if model.task in ("text-classification", "token-classification") and labels:
        config.id2label, config.label2id = dict(enumerate(labels)), {name: i for i, name in enumerate(labels)}
    auto = getattr(transformers, task_spec(model.task).auto_class)
    config.architectures = [auto._model_mapping[type(config)].__name__]
    return config


def stock_state(model: ElasticModel, fixed: FixedSizeModel) -> dict[str, Tensor]:
    """`fixed`'s weights under the stock task model's names (the bare encoder's for feature-extraction)."""
    ours = {k: v.detach() for k, v in fixed.state_dict().items()}
    vocab_map = ours.pop("embeddings.vocab_map", None)
    if vocab_map is not None:  # a pruned vocabulary: every tokenizer id gets its kept row back
        ours["embeddings.word.weight"] = ours["embeddings.word.weight"][vocab_map]  # (V, E)
    s = model.shape
    pairs = name_pairs(model.family, len(fixed.structure), s.type_vocab > 0, s.embedding_size != s.hidden, model.task)
    prefix = model.family.embeddings.split(".")[0] + "."  # "bert.": AutoModel's names lack it
    state = {}
    for mine, theirs, transposed in pairs:
        if model.task == "feature-extraction":
            theirs = theirs.removeprefix(prefix)
        state[theirs] = (ours[mine].T if transposed else ours[mine]).contiguous()
    return state


def save_transformers(model: ElasticModel, fixed: FixedSizeModel, out: Path, max_length: int) -> bool:
    """Write the size as a transformers directory into `out`; True when it is a stock model."""
    structure = fixed.structure
    stock = is_stock(model, structure)
    if stock:
        state = stock_state(model, fixed)
        stock_config(model, len(structure), structure[0][1]).save_pretrained(out)
    else:
        state = {k: v.detach().contiguous() for k, v in fixed.state_dict().items()}
        write_remote(remote_config(model, structure), out)
    save_file(state, str(out / WEIGHTS), metadata={"format": "pt"})
    if model.task == "feature-extraction":
        save_sentence_transformers(out, model.shape.hidden, max_length)
    return stock


def save_sentence_transformers(out: Path, hidden: int, max_length: int) -> None:
    """sentence-transformers' files: the directory's model, then mean pooling over real tokens, then Normalize."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length, "do_lower_case": False}))
    (out / "1_Pooling").mkdir(exist_ok=True)
    pooling = {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")


def save_onnx_config(model: ElasticModel, structure: Structure, out: Path) -> None:
    """config.json beside model.onnx, for optimum (`ORTModelFor<Task>.from_pretrained`), TEI and Infinity: the
    stock config where it says the size; else the base config's widths with the kept layer count and, as
    `dynsparse_structure`, the kept (heads, neurons) per layer (the graph holds the weights; these runtimes
    read the model type, labels and lengths from the config)."""
    stock = is_stock(model, structure)
    config = stock_config(model, len(structure), structure[0][1] if stock else model.shape.intermediate)
    if not stock:
        config.dynsparse_structure = [list(hn) for hn in structure]
    config.save_pretrained(out)
