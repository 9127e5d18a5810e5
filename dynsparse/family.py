"""Architecture families as data: where each weight lives in a transformers checkpoint, per model type.

Adding a BERT-like family is a new table row, not a subclass (TextPruner's lesson). Every name pattern
is relative to the `*ForSequenceClassification` state dict; `{i}` is the layer index.
"""

from dataclasses import dataclass
from typing import Any

from dynsparse.errors import InputError


@dataclass(frozen=True)
class LayerNames:
    """Per-layer weight names (prefix + suffix, without `.weight`/`.bias`)."""

    prefix: str  # e.g. "bert.encoder.layer.{i}."
    query: str
    key: str
    value: str
    attn_out: str
    attn_norm: str
    ffn_in: str
    ffn_out: str
    ffn_norm: str


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    embeddings: str  # prefix of word/position/(token_type)/LayerNorm
    layers: LayerNames
    pool: str  # dense layer applied to the first token
    pool_act: str  # activation after it (transformers ACT2FN name)
    classifier: str
    embed_project: str | None = None  # ELECTRA: embedding_size -> hidden_size
    padded_positions: bool = False  # RoBERTa: positions count from padding_idx + 1


_BERT_LAYER = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attn_out": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
    "ffn_norm": "output.LayerNorm",
}

FAMILIES: tuple[Family, ...] = (
    Family(
        name="bert",
        model_types=("bert",),
        embeddings="bert.embeddings.",
        layers=LayerNames(prefix="bert.encoder.layer.{i}.", **_BERT_LAYER),
        pool="bert.pooler.dense",
        pool_act="tanh",
        classifier="classifier",
    ),
    Family(
        name="roberta",
        model_types=("roberta", "xlm-roberta", "camembert"),
        embeddings="roberta.embeddings.",
        layers=LayerNames(prefix="roberta.encoder.layer.{i}.", **_BERT_LAYER),
        pool="classifier.dense",
        pool_act="tanh",
        classifier="classifier.out_proj",
        padded_positions=True,
    ),
    Family(
        name="electra",
        model_types=("electra",),
        embeddings="electra.embeddings.",
        layers=LayerNames(prefix="electra.encoder.layer.{i}.", **_BERT_LAYER),
        pool="classifier.dense",
        pool_act="gelu",
        classifier="classifier.out_proj",
        embed_project="electra.embeddings_project",
    ),
    Family(
        name="distilbert",
        model_types=("distilbert",),
        embeddings="distilbert.embeddings.",
        layers=LayerNames(
            prefix="distilbert.transformer.layer.{i}.",
            query="attention.q_lin",
            key="attention.k_lin",
            value="attention.v_lin",
            attn_out="attention.out_lin",
            attn_norm="sa_layer_norm",
            ffn_in="ffn.lin1",
            ffn_out="ffn.lin2",
            ffn_norm="output_layer_norm",
        ),
        pool="pre_classifier",
        pool_act="relu",
        classifier="classifier",
    ),
)


def family_for(model_type: str) -> Family:
    """The family that handles a transformers `model_type`.

    Raises:
        InputError: the architecture is not supported.
    """
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    known = sorted(t for f in FAMILIES for t in f.model_types)
    raise InputError(f"unsupported architecture {model_type!r}; dynsparse supports {', '.join(known)}")


@dataclass(frozen=True)
class EncoderShape:
    """The numbers that fix every tensor shape, read from a transformers config."""

    vocab_size: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int
    type_vocab: int  # 0: no token-type embeddings (DistilBERT)
    embedding_size: int
    act: str
    ln_eps: float
    pad_token_id: int
    num_labels: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def shape_from_config(config: Any) -> EncoderShape:
    """Read an `EncoderShape` from a transformers `PretrainedConfig` of a supported family."""
    family_for(config.model_type)
    distil = config.model_type == "distilbert"
    hidden = config.hidden_size
    if hidden % config.num_attention_heads:
        raise InputError(f"hidden_size {hidden} is not a multiple of num_attention_heads {config.num_attention_heads}")
    return EncoderShape(
        vocab_size=config.vocab_size,
        hidden=hidden,
        layers=config.num_hidden_layers,
        heads=config.num_attention_heads,
        intermediate=config.hidden_dim if distil else config.intermediate_size,
        max_positions=config.max_position_embeddings,
        type_vocab=0 if distil else config.type_vocab_size,
        embedding_size=getattr(config, "embedding_size", hidden) or hidden,
        act=config.activation if distil else config.hidden_act,
        ln_eps=1e-12 if distil else config.layer_norm_eps,
        pad_token_id=config.pad_token_id if config.pad_token_id is not None else 0,
        num_labels=config.num_labels,
    )
