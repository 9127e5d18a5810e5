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
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.activations import ACT2FN

from dynsparse.config import Allocation
from dynsparse.cost import head_cost, level_costs, neuron_cost
from dynsparse.errors import InputError
from dynsparse.family import EncoderShape, Family
from dynsparse.heads import head_params
from dynsparse.masks import GlobalRanking, Structure, global_structure, rank_globally, uniform_structure
from dynsparse.metadata import CheckpointMeta
from dynsparse.packing import Packing
from dynsparse.tasks import task_spec


@dataclass
class EncoderOutput:
    logits: Tensor  # the task head's output: (B, C) labels, (B, T, C) tokens, (B, T, 2) spans, (B, H) embeddings
    last_hidden_state: Tensor  # (B, T, H)


class Embeddings(nn.Module):
    """Word, position and token-type embeddings. After vocabulary pruning (`dynsparse.vocab`) the word matrix
    holds only the kept tokens and `vocab_map` sends each tokenizer id to its row (dropped ones to unk's)."""

    vocab_map: Tensor | None

    def __init__(self, shape: EncoderShape, padded_positions: bool, dropout: float, kept_vocab: int | None = None):
        super().__init__()
        e = shape.embedding_size
        self.word = nn.Embedding(kept_vocab or shape.vocab_size, e)
        vocab_map = torch.zeros(shape.vocab_size, dtype=torch.long) if kept_vocab is not None else None
        self.register_buffer("vocab_map", vocab_map)  # None (no entry in the state dict) until pruned
        self.position = nn.Embedding(shape.max_positions, e)
        self.token_type = nn.Embedding(shape.type_vocab, e) if shape.type_vocab else None
        self.norm = nn.LayerNorm(e, eps=shape.ln_eps)
        self.project = nn.Linear(e, shape.hidden) if e != shape.hidden else None
        self.dropout = nn.Dropout(dropout)
        self.padded_positions = padded_positions
        self.pad_token_id = shape.pad_token_id

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None) -> Tensor:
        if self.padded_positions:  # RoBERTa: positions start after padding_idx, pads keep padding_idx
            not_pad = input_ids.ne(self.pad_token_id).long()  # (B, T)
            positions = torch.cumsum(not_pad, dim=1) * not_pad + self.pad_token_id
        else:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        words = self.vocab_map[input_ids] if self.vocab_map is not None else input_ids
        x = self.word(words) + self.position(positions)  # (B, T, E)
        if self.token_type is not None:
            types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
            x = x + self.token_type(types)
        x = self.dropout(self.norm(x))
        return self.project(x) if self.project is not None else x


class ElasticLayer(nn.Module):
    """A post-LayerNorm transformer layer whose heads and neurons are prefixes of its weights."""

    def __init__(self, shape: EncoderShape, hidden_dropout: float, attn_dropout: float) -> None:
        super().__init__()
        d, a, f = shape.hidden, shape.heads * shape.head_dim, shape.intermediate
        self.head_dim = shape.head_dim
        self.q_weight, self.q_bias = nn.Parameter(torch.empty(a, d)), nn.Parameter(torch.zeros(a))
        self.k_weight, self.k_bias = nn.Parameter(torch.empty(a, d)), nn.Parameter(torch.zeros(a))
        self.v_weight, self.v_bias = nn.Parameter(torch.empty(a, d)), nn.Parameter(torch.zeros(a))
        self.attn_out_weight_t = nn.Parameter(torch.empty(a, d))  # transposed: head rows are a prefix
        self.attn_out_bias = nn.Parameter(torch.zeros(d))
        self.attn_norm = nn.LayerNorm(d, eps=shape.ln_eps)
        self.ffn_in_weight, self.ffn_in_bias = nn.Parameter(torch.empty(f, d)), nn.Parameter(torch.zeros(f))
        self.ffn_out_weight_t = nn.Parameter(torch.empty(f, d))  # transposed: neuron rows are a prefix
        self.ffn_out_bias = nn.Parameter(torch.zeros(d))
        self.ffn_norm = nn.LayerNorm(d, eps=shape.ln_eps)
        self.act = ACT2FN[shape.act]
        self.dropout = nn.Dropout(hidden_dropout)
        self.attn_dropout = attn_dropout
        for w in (
            self.q_weight,
            self.k_weight,
            self.v_weight,
            self.attn_out_weight_t,
            self.ffn_in_weight,
            self.ffn_out_weight_t,
        ):
            nn.init.normal_(w, std=0.02)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None,
        heads: int,
        neurons: int,
        head_gate: Tensor | None = None,
        neuron_gate: Tensor | None = None,
        rows: "UnitRows | None" = None,
        packing: Packing | None = None,
    ) -> Tensor:
        """`rows` (a per-language ordering) picks the kept units by index instead of the stored prefix: a gather
        of the kept rows per forward, the price of an ordering the storage is not sorted by. With `packing`, `x`
        is the batch's real tokens (N, H): only attention sees the padded grid (per-row gates are not taken)."""
        b, t = (packing.batch, packing.length) if packing is not None else x.shape[:2]
        a = heads * self.head_dim
        hr, nr = (rows.heads, rows.neurons) if rows is not None else (None, None)

        def split(y: Tensor) -> Tensor:  # (B, T, a) or packed (N, a) -> (B, h, T, hd)
            return (packing.pad(y) if packing is not None else y).view(b, t, heads, -1).transpose(1, 2)

        q = split(F.linear(x, take_rows(self.q_weight, a, hr), take_rows(self.q_bias, a, hr)))
        k = split(F.linear(x, take_rows(self.k_weight, a, hr), take_rows(self.k_bias, a, hr)))
        v = split(F.linear(x, take_rows(self.v_weight, a, hr), take_rows(self.v_bias, a, hr)))
        p = self.attn_dropout if self.training else 0.0
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p).transpose(1, 2)  # (B, T, h, hd)
        if head_gate is not None:  # masked forward (importance, tests): scale each head's output; (H,) or (B, H)
            ctx = ctx * head_gate.unsqueeze(-2).unsqueeze(-1)
        ctx = ctx.reshape(b, t, a) if packing is None else packing.pack(ctx)
        attn = torch.matmul(ctx, take_rows(self.attn_out_weight_t, a, hr)) + self.attn_out_bias
        x = self.attn_norm(x + self.dropout(attn))  # (B, T, H) or (N, H)
        w_in, b_in = take_rows(self.ffn_in_weight, neurons, nr), take_rows(self.ffn_in_bias, neurons, nr)
        inner = self.act(F.linear(x, w_in, b_in))  # (B, T, n)
        if neuron_gate is not None:  # (n,) or (B, n)
            inner = inner * neuron_gate.unsqueeze(-2)
        out = torch.matmul(inner, take_rows(self.ffn_out_weight_t, neurons, nr)) + self.ffn_out_bias  # (B, T, H)
        return self.ffn_norm(x + self.dropout(out))


@dataclass(frozen=True)
class UnitRows:
    """A layer's kept units by index: head rows (h * head_dim,) and neurons (n,)."""

    heads: Tensor
    neurons: Tensor


def take_rows(w: Tensor, k: int, rows: Tensor | None) -> Tensor:
    """The first `k` rows (a view), or the given rows (a gather)."""
    return w[:k] if rows is None else w.index_select(0, rows)


class ElasticModel(nn.Module):
    """An encoder that runs at any sparsity in [0, 1) from one set of weights.

    Example:
        >>> model = dynsparse.load("runs/sst2")
        >>> model.structure(0.5)                      # per layer (heads, neurons) kept
        >>> model(input_ids=ids, attention_mask=mask, sparsity=0.5).logits
    """

    head_scores: Tensor  # (L, H) buffers, declared for type checkers
    neuron_scores: Tensor  # (L, F)
    language_head_scores: Tensor | None  # (N, L, H) per-language importance of the stored units (non-shared)
    language_neuron_scores: Tensor | None  # (N, L, F)

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
        self._structures: dict[tuple[float, int | None, str | None], Structure] = {}
        self._ranking: GlobalRanking | None = None
        # Non-shared setting: one more ordering per language, as scores of the stored units (None: shared only).
        self.languages: list[str] = list(self.meta.ordering.languages)
        n, lay = len(self.languages), shape.layers
        self.register_buffer("language_head_scores", torch.zeros(n, lay, shape.heads) if n else None)
        self.register_buffer("language_neuron_scores", torch.zeros(n, lay, shape.intermediate) if n else None)
        self._rows: dict[tuple[str, Structure, str], list[UnitRows]] = {}
        # Depth: layers ranked most important first; depth d keeps the first d of them (nested like width).
        stored_order = self.meta.depth.order if self.meta.depth else None
        self.layer_order: list[int] = list(stored_order or every_other(shape.layers))

    # -- sizes -------------------------------------------------------------------------------------
    def structure(self, sparsity: float, depth: int | None = None, language: str | None = None) -> Structure:
        """Per layer, the (heads, neurons) kept at `sparsity`, and with `depth` only that many layers (the
        others are (0, 0): skipped). Nested in both: a larger s or a smaller depth keeps a subset. With global
        allocation, a `language`'s own ordering (non-shared setting) may spread the counts differently."""
        check_sparsity(sparsity)
        depth = self.check_depth(depth)
        lang = self.check_language(language) if self.allocation == "global" else None  # uniform: the same counts
        key = (sparsity, depth, lang)
        if key not in self._structures:
            if len(self._structures) >= 4096:  # requests may ask any float: keep the cache bounded
                self._structures.clear()
            self._structures[key] = drop_layers(self._width(sparsity, lang), self.layer_order, depth)
        return self._structures[key]

    def _width(self, sparsity: float, language: str | None = None) -> Structure:
        if self.allocation == "global":
            if language is not None:
                head, neuron = self._language_scores(language)
                ranking = rank_globally(
                    head.sort(-1, descending=True).values,
                    neuron.sort(-1, descending=True).values,
                    head_cost(self.shape),
                    neuron_cost(self.shape),
                )
                return global_structure(sparsity, ranking)
            self._ranking = self._ranking or rank_globally(
                self.head_scores.cpu(), self.neuron_scores.cpu(), head_cost(self.shape), neuron_cost(self.shape)
            )
            return global_structure(sparsity, self._ranking)
        s = self.shape
        return uniform_structure(sparsity, s.layers, s.heads, s.intermediate)

    # -- per-language orderings (the non-shared setting) ----------------------------------------------
    def check_language(self, language: str | None) -> str | None:
        """`language` if this checkpoint has an ordering for it; None means the shared ordering."""
        if language is None or language in self.languages:
            return language
        have = ", ".join(self.languages) if self.languages else "none: it has one shared ordering"
        raise InputError(f"no ordering for language {language!r:.40}; this checkpoint's languages: {have}")

    def set_language_scores(self, languages: list[str], head: Tensor, neuron: Tensor) -> None:
        """Record one ordering per language: scores (N, L, H) and (N, L, F) of the units as stored now."""
        self.languages = list(languages)
        self.language_head_scores = head.detach().float().to(self.head_scores.device)
        self.language_neuron_scores = neuron.detach().float().to(self.head_scores.device)
        self.meta = self.meta.with_languages(self.languages)
        self._structures.clear()
        self._rows.clear()

    def _language_scores(self, language: str) -> tuple[Tensor, Tensor]:
        assert self.language_head_scores is not None and self.language_neuron_scores is not None
        i = self.languages.index(language)
        return self.language_head_scores[i].cpu(), self.language_neuron_scores[i].cpu()

    def unit_rows(self, language: str, structure: Structure) -> list[UnitRows]:
        """Per layer, the stored rows a language's ordering keeps at `structure` (cached, bounded)."""
        key = (language, structure, str(self.head_scores.device))  # a moved model needs its indices where it is
        if key not in self._rows:
            if len(self._rows) >= 256:
                self._rows.clear()
            head, neuron = self._language_scores(language)
            device, hd = self.head_scores.device, self.shape.head_dim
            rows = []
            for (h, n), hs, ns in zip(structure, head, neuron, strict=True):
                top_h = torch.sort(hs, descending=True, stable=True).indices[:h]
                top_n = torch.sort(ns, descending=True, stable=True).indices[:n]
                head_rows = (top_h.sort().values[:, None] * hd + torch.arange(hd)).flatten()  # (h * hd,)
                rows.append(UnitRows(head_rows.to(device), top_n.sort().values.to(device)))
            self._rows[key] = rows
        return self._rows[key]

    def check_depth(self, depth: int | None) -> int | None:
        """`depth` as a layer count, None for all layers; an `InputError` outside 1 ... layers."""
        layers = self.shape.layers
        if depth is None or depth == layers:
            return None
        if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= layers:
            raise InputError(f"depth must be a whole number of layers from 1 to {layers}, got {depth!r}")
        return depth

    def set_layer_order(self, order: list[int], rule: str) -> None:
        """Fix the order in which depth drops layers (most important first); recorded in the checkpoint."""
        if sorted(order) != list(range(self.shape.layers)):
            raise ValueError(f"a layer order must rank each of the {self.shape.layers} layers once, got {order}")
        self.layer_order = list(order)
        self.meta = self.meta.with_depth(order=tuple(self.layer_order), rule=rule)
        self._structures.clear()

    def costs(self, sparsity: float, seq_len: int, depth: int | None = None) -> dict[str, float]:
        """Parameters (with and without embeddings) and FLOPs per sequence of `seq_len` tokens at a size."""
        head, shape = self.head, replace(self.shape, vocab_size=self.embeddings.word.num_embeddings)
        return level_costs(shape, self.structure(sparsity, depth), seq_len, head_params(head), head.flops(seq_len))

    def set_scores(self, head_scores: Tensor, neuron_scores: Tensor) -> None:
        """Record the (already sorted) importance that fixes the ordering; forgets cached structures."""
        self.head_scores.copy_(head_scores)
        self.neuron_scores.copy_(neuron_scores)
        self._structures.clear()
        self._rows.clear()
        self._ranking = None

    def set_allocation(self, allocation: Allocation) -> None:
        self.allocation = allocation
        self.meta = replace(self.meta, allocation=allocation)
        self._structures.clear()
        self._rows.clear()

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


def every_other(layers: int) -> list[int]:
    """The fixed depth order of DynaBERT and LayerDrop: even layers rank first, so half the depth keeps every other
    layer; odd layers drop from the top down, then even ones."""
    return [*range(0, layers, 2), *range(1, layers, 2)]


def drop_layers(structure: Structure, order: list[int], depth: int | None) -> Structure:
    """`structure` with the layers outside the first `depth` of `order` set to (0, 0)."""
    if depth is None:
        return structure
    kept = set(order[:depth])
    return tuple(hn if i in kept else (0, 0) for i, hn in enumerate(structure))


def check_sparsity(sparsity: float) -> None:
    if not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise InputError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
