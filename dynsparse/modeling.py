"""The elastic encoder: one set of weights, any width, chosen per forward call.

Units (heads, FFN neurons) are stored in importance order, so the units kept at sparsity s are a
*prefix*. Every prunable weight is stored with its unit on dim 0 (the two output projections are kept
transposed), which makes a size's weights contiguous views `w[:k]`: a size switch copies nothing and
the matmuls really shrink.
"""

import os
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from dynsparse.config import Allocation
from dynsparse.cost import level_costs
from dynsparse.errors import InputError
from dynsparse.family import EncoderShape, Family
from dynsparse.heads import head_params
from dynsparse.layers import ElasticLayer, Embeddings
from dynsparse.masks import Structure
from dynsparse.metadata import CheckpointMeta
from dynsparse.orderings import UnitOrderings
from dynsparse.packing import Packing
from dynsparse.tasks import task_spec


@dataclass
class EncoderOutput:
    logits: Tensor  # the task head's output: (B, C) labels, (B, T, C) tokens, (B, T, 2) spans, (B, H) embeddings
    last_hidden_state: Tensor  # (B, T, H)


class ElasticModel(UnitOrderings, nn.Module):
    """An encoder that runs at any sparsity in [0, 1) from one set of weights.

    Example:
        >>> model = dynsparse.load("runs/sst2")
        >>> model.structure(0.5)                      # per layer (heads, neurons) kept
        >>> model(input_ids=ids, attention_mask=mask, sparsity=0.5).logits
    """

    def __init__(
        self,
        shape: EncoderShape,
        family: Family,
        hf_config: Any,
        allocation: Allocation = "uniform",
        tokenizer: Any = None,
        meta: CheckpointMeta | None = None,
        task: str | None = None,
    ) -> None:
        super().__init__()
        self.shape, self.family, self.hf_config, self.tokenizer = shape, family, hf_config, tokenizer
        self.allocation: Allocation = allocation
        meta = meta or CheckpointMeta()
        spec = task_spec(task or meta.task)
        self.task = spec.name
        labels = meta.labels if meta.labels is not None else tuple(str(i) for i in range(shape.num_labels))
        self.meta = replace(meta, task=self.task, labels=labels, family=family.name, allocation=allocation)
        self.meta = replace(self.meta, model_type=getattr(hf_config, "model_type", None))
        hidden_dropout = getattr(hf_config, "hidden_dropout_prob", getattr(hf_config, "dropout", 0.1))
        attn_dropout = getattr(hf_config, "attention_probs_dropout_prob", getattr(hf_config, "attention_dropout", 0.1))
        kept = self.meta.vocabulary.kept if self.meta.vocabulary else None
        self.embeddings = Embeddings(shape, family.padded_positions, hidden_dropout, kept)
        self.layers = nn.ModuleList(ElasticLayer(shape, hidden_dropout, attn_dropout) for _ in range(shape.layers))
        self.head = spec.head(shape, family, hidden_dropout)
        # Importance scores, sorted descending per layer (units are stored in this order). The natural order
        # (a descending ramp) until training or `rewire` sets real scores.
        self.register_buffer("head_scores", torch.linspace(1, 0, shape.heads).repeat(shape.layers, 1))  # (L, H)
        self.register_buffer("neuron_scores", torch.linspace(1, 0, shape.intermediate).repeat(shape.layers, 1))
        self._init_orderings(shape.layers)
        # Non-shared setting: one more ordering per language, as scores of the stored units (None: shared only).
        n, lay = len(self.languages), shape.layers
        self.register_buffer("language_head_scores", torch.zeros(n, lay, shape.heads) if n else None)
        self.register_buffer("language_neuron_scores", torch.zeros(n, lay, shape.intermediate) if n else None)

    # -- sizes (the rest: UnitOrderings) ----------------------------------------------------------
    def costs(self, sparsity: float, seq_len: int, depth: int | None = None) -> dict[str, float]:
        """Parameters (with and without embeddings) and FLOPs per sequence of `seq_len` tokens at a size."""
        head, shape = self.head, replace(self.shape, vocab_size=self.embeddings.word.num_embeddings)
        return level_costs(shape, self.structure(sparsity, depth), seq_len, head_params(head), head.flops(seq_len))

    # -- forward -----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """`dynsparse.save(self, path)`, DESIGN.md's `model.save` (`dynsparse.writer` names this module for types
        only: no cycle)."""
        from dynsparse.writer import save_checkpoint

        save_checkpoint(self, path)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        sparsity: float = 0.0,
        structure: Structure | None = None,
        head_mask: Tensor | None = None,
        neuron_mask: Tensor | None = None,
        depth: int | None = None,
        layer_mask: Tensor | None = None,
        language: str | None = None,
        unpad: bool = False,
    ) -> EncoderOutput:
        """Run at `sparsity` and `depth` (or an explicit `structure`), with `language`'s own ordering when given
        (non-shared setting); `head_mask` (L, H) or (B, L, H) / `neuron_mask` (L, F) or (B, L, F) / `layer_mask`
        (L,) instead scale units or whole layers' residual branches of the full model (the masked forward used
        for importance and tests). `unpad`: see `encode`."""
        hidden = self.encode(
            input_ids,
            attention_mask,
            token_type_ids,
            sparsity,
            structure,
            head_mask,
            neuron_mask,
            depth,
            layer_mask,
            language,
            unpad,
        )
        return EncoderOutput(logits=self.head(hidden, attention_mask), last_hidden_state=hidden)

    def encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        sparsity: float = 0.0,
        structure: Structure | None = None,
        head_mask: Tensor | None = None,
        neuron_mask: Tensor | None = None,
        depth: int | None = None,
        layer_mask: Tensor | None = None,
        language: str | None = None,
        unpad: bool = False,
    ) -> Tensor:
        """The last hidden states (B, T, H) at a size. `unpad`: the linear layers run on the real tokens only
        when the batch is padded (`packing`; inference, not with masks); the hidden states at padding positions
        come back zero (so a per-token head's outputs there are its bias: every reader skips them)."""
        if input_ids.ndim != 2 or input_ids.shape[0] == 0:
            raise InputError(f"input_ids must be a non-empty (batch, seq) tensor, got shape {tuple(input_ids.shape)}")
        language = self.check_language(language)
        if structure is None:
            structure = self.structure(sparsity, depth, language)
        rows = self.unit_rows(language, structure) if language is not None else None
        mask = None
        # on CPU an unpadded batch runs without a mask (SDPA's fast path); on GPU that check would cost a sync
        may_skip = attention_mask is not None and attention_mask.device.type == "cpu" and not _tracing()
        if attention_mask is not None and not (may_skip and bool(attention_mask.all())):
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): True attends; none without padding
        masked = head_mask is not None or neuron_mask is not None or layer_mask is not None
        packing = Packing.of(attention_mask) if unpad and attention_mask is not None and not masked else None
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        if packing is not None:
            x = packing.pack(x)  # (N, H)
        for i, (layer, (heads, neurons)) in enumerate(zip(self.layers, structure, strict=True)):
            if heads == 0 and neurons == 0:  # dropped by depth: the layer is skipped
                continue
            hg = head_mask[..., i, :] if head_mask is not None else None  # (H,) or per row (B, H)
            ng = neuron_mask[..., i, :] if neuron_mask is not None else None
            y = layer(x, mask, heads, neurons, hg, ng, rows[i] if rows is not None else None, packing)
            x = y if layer_mask is None else x + layer_mask[i] * (y - x)  # gate 0 is the layer dropped
        return packing.pad(x) if packing is not None else x


def _tracing() -> bool:
    """Inside an export or a compile: the graph must keep the mask (an unpadded example input says nothing)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
