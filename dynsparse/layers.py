"""The elastic encoder's building blocks: embeddings, and a transformer layer whose heads and neurons are prefixes
of its weights (`w[:k]`: a view, so a size switch copies nothing and the matmuls really shrink)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.activations import ACT2FN

from dynsparse.family import EncoderShape
from dynsparse.packing import Packing


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
        x2 = x.reshape(-1, x.shape[-1])  # (B * T, H) or (N, H): every projection is one addmm, bias fused

        def split(y: Tensor) -> Tensor:  # (B * T, a) or packed (N, a) -> (B, h, T, hd)
            return (packing.pad(y) if packing is not None else y).view(b, t, heads, -1).transpose(1, 2)

        q = split(_project(x2, self.q_weight, self.q_bias, a, hr))
        k = split(_project(x2, self.k_weight, self.k_bias, a, hr))
        v = split(_project(x2, self.v_weight, self.v_bias, a, hr))
        p = self.attn_dropout if self.training else 0.0
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p).transpose(1, 2)  # (B, T, h, hd)
        if head_gate is not None:  # masked forward (importance, tests): scale each head's output; (H,) or (B, H)
            ctx = ctx * head_gate.unsqueeze(-2).unsqueeze(-1)
        ctx = ctx.reshape(b * t, a) if packing is None else packing.pack(ctx)
        attn = torch.addmm(self.attn_out_bias, ctx, take_rows(self.attn_out_weight_t, a, hr))
        h = self._residual_norm(attn, x2, self.attn_norm)  # (B * T, H) or (N, H)
        inner = self.act(_project(h, self.ffn_in_weight, self.ffn_in_bias, neurons, nr))  # (B * T, n)
        if neuron_gate is not None:  # (n,) or (B, n); gates never come with packing
            inner = (inner.view(b, t, -1) * neuron_gate.unsqueeze(-2)).view(b * t, -1)
        out = torch.addmm(self.ffn_out_bias, inner, take_rows(self.ffn_out_weight_t, neurons, nr))
        return self._residual_norm(out, h, self.ffn_norm).view(x.shape)

    def _residual_norm(self, branch: Tensor, residual: Tensor, norm: nn.LayerNorm) -> Tensor:
        """norm(residual + dropout(branch)); `branch` is a fresh matmul output, so the add may reuse it (in
        eval the dropout call is skipped: at batch 1 each op's dispatch is a visible share of the time)."""
        if self.training:
            branch = self.dropout(branch)
        return F.layer_norm(branch.add_(residual), norm.normalized_shape, norm.weight, norm.bias, norm.eps)


@dataclass(frozen=True)
class UnitRows:
    """A layer's kept units by index: head rows (h * head_dim,) and neurons (n,)."""

    heads: Tensor
    neurons: Tensor


def _project(x: Tensor, w: Tensor, bias: Tensor, k: int, rows: Tensor | None) -> Tensor:
    """x @ w[:k].T + bias[:k] (or the given rows) as one addmm: the bias add is fused into the matmul."""
    return torch.addmm(take_rows(bias, k, rows), x, take_rows(w, k, rows).t())


def take_rows(w: Tensor, k: int, rows: Tensor | None) -> Tensor:
    """The first `k` rows (a view), or the given rows (a gather)."""
    return w[:k] if rows is None else w.index_select(0, rows)
