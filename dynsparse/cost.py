"""Parameter and FLOP accounting of a structure. Embeddings are reported apart: in XLM-R they dominate
the parameter count but cost almost no compute ("fast is not small")."""

from dynsparse.family import EncoderShape
from dynsparse.masks import Structure, layers_kept


def head_cost(shape: EncoderShape) -> int:
    """Parameters of one attention head: q, k, v rows with biases and its rows of the output projection."""
    return 4 * shape.hidden * shape.head_dim + 3 * shape.head_dim


def neuron_cost(shape: EncoderShape) -> int:
    """Parameters of one FFN neuron: its input row and bias and its output column."""
    return 2 * shape.hidden + 1


def prunable_params(shape: EncoderShape, structure: Structure) -> int:
    return sum(h * head_cost(shape) + n * neuron_cost(shape) for h, n in structure)


def embedding_params(shape: EncoderShape) -> int:
    e = shape.embedding_size
    project = e * shape.hidden + shape.hidden if e != shape.hidden else 0
    return (shape.vocab_size + shape.max_positions + shape.type_vocab + 2) * e + project


def encoder_params(shape: EncoderShape, structure: Structure) -> int:
    """Transformer layers only: prunable units plus the output biases and LayerNorms of every layer kept."""
    return prunable_params(shape, structure) + 6 * shape.hidden * layers_kept(structure)


def classifier_params(shape: EncoderShape) -> int:
    """The sequence classifier's head: pooler dense layer and classifier."""
    return shape.hidden * shape.hidden + shape.hidden + shape.hidden * shape.num_labels + shape.num_labels


def flops(shape: EncoderShape, structure: Structure, seq_len: int, head_flops: int | None = None) -> int:
    """Forward FLOPs (2 per multiply-add) for one sequence of `seq_len` tokens; the head's FLOPs default
    to the sequence classifier's (pooler and classifier on the first token)."""
    t, d, hd = seq_len, shape.hidden, shape.head_dim
    total = 2 * t * shape.embedding_size * d if shape.embedding_size != d else 0
    for h, n in structure:
        a = h * hd
        total += 2 * t * d * 3 * a + 2 * 2 * t * t * a + 2 * t * a * d  # q, k, v; scores and context; output
        total += 2 * 2 * t * d * n  # FFN in and out
    return total + (2 * (d * d + d * shape.num_labels) if head_flops is None else head_flops)


def level_costs(
    shape: EncoderShape,
    structure: Structure,
    seq_len: int,
    head_params: int | None = None,
    head_flops: int | None = None,
) -> dict[str, float]:
    """The accounting columns of a level row (the head defaults to the sequence classifier's)."""
    full = ((shape.heads, shape.intermediate),) * shape.layers
    kept = prunable_params(shape, structure)
    enc, emb = encoder_params(shape, structure), embedding_params(shape)
    return {
        "params": enc + emb + (classifier_params(shape) if head_params is None else head_params),
        "params_encoder": enc,
        "params_embeddings": emb,
        "prunable_removed": round(1.0 - kept / prunable_params(shape, full), 4),
        "flops": flops(shape, structure, seq_len, head_flops),
        "flops_seq_len": seq_len,
    }
