"""A dynsparse checkpoint (or one fixed size of it) as a transformers model: `trust_remote_code` loads this file.

    model = AutoModelForSequenceClassification.from_pretrained(CKPT, trust_remote_code=True, sparsity=0.5)
    model(**tokenizer(texts, padding=True, return_tensors="pt")).logits   # == dynsparse.load(CKPT) at 0.5
    model(**batch, sparsity=0.8)                                          # any other size, same weights

Self-contained on purpose (torch and transformers only): the weights keep dynsparse's names and layout (every
head's and neuron's rows on dim 0, stored in importance order, so a size is a prefix), and the few rules that
turn a sparsity into per-layer (heads, neurons) are repeated here from `dynsparse.masks`. A fixed-size export
(`config.dynsparse["layer_sizes"]`) holds only its kept units and runs at that one size.
"""

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from .configuration_dynsparse import DynsparseConfig

Structure = tuple[tuple[int, int], ...]  # per layer: (heads kept, neurons kept)


class DynsparseEmbeddings(nn.Module):
    vocab_map: Tensor | None

    def __init__(self, s: dict[str, Any], padded_positions: bool, kept_vocab: int | None) -> None:
        super().__init__()
        e = s["embedding_size"]
        self.word = nn.Embedding(kept_vocab or s["vocab_size"], e)
        vocab_map = torch.zeros(s["vocab_size"], dtype=torch.long) if kept_vocab else None
        self.register_buffer("vocab_map", vocab_map)  # a pruned vocabulary: tokenizer id -> kept row
        self.position = nn.Embedding(s["max_positions"], e)
        self.token_type = nn.Embedding(s["type_vocab"], e) if s["type_vocab"] else None
        self.norm = nn.LayerNorm(e, eps=s["ln_eps"])
        self.project = nn.Linear(e, s["hidden"]) if e != s["hidden"] else None
        self.padded_positions, self.pad_token_id = padded_positions, s["pad_token_id"]

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None) -> Tensor:
        if self.padded_positions:  # RoBERTa: positions start after padding_idx, pads keep padding_idx
            not_pad = input_ids.ne(self.pad_token_id).long()  # (B, T)
            positions = torch.cumsum(not_pad, dim=1) * not_pad + self.pad_token_id
        else:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        words = self.vocab_map[input_ids] if self.vocab_map is not None else input_ids
        x = self.word(words) + self.position(positions)  # (B, T, E)
        if self.token_type is not None:
            x = x + self.token_type(token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids))
        x = self.norm(x)
        return self.project(x) if self.project is not None else x


class DynsparseLayer(nn.Module):
    """Post-LayerNorm layer; the two output projections are stored transposed (unit rows on dim 0)."""

    def __init__(self, s: dict[str, Any], heads: int, neurons: int) -> None:
        super().__init__()
        d, hd = s["hidden"], s["hidden"] // s["heads"]
        a = heads * hd
        self.head_dim = hd
        self.q_weight, self.q_bias = nn.Parameter(torch.zeros(a, d)), nn.Parameter(torch.zeros(a))
        self.k_weight, self.k_bias = nn.Parameter(torch.zeros(a, d)), nn.Parameter(torch.zeros(a))
        self.v_weight, self.v_bias = nn.Parameter(torch.zeros(a, d)), nn.Parameter(torch.zeros(a))
        self.attn_out_weight_t, self.attn_out_bias = nn.Parameter(torch.zeros(a, d)), nn.Parameter(torch.zeros(d))
        self.attn_norm = nn.LayerNorm(d, eps=s["ln_eps"])
        self.ffn_in_weight, self.ffn_in_bias = nn.Parameter(torch.zeros(neurons, d)), nn.Parameter(torch.zeros(neurons))
        self.ffn_out_weight_t, self.ffn_out_bias = nn.Parameter(torch.zeros(neurons, d)), nn.Parameter(torch.zeros(d))
        self.ffn_norm = nn.LayerNorm(d, eps=s["ln_eps"])
        self.act = ACT2FN[s["act"]]

    def forward(self, x: Tensor, mask: Tensor | None, heads: int, neurons: int) -> Tensor:
        b, t = x.shape[:2]
        a = heads * self.head_dim

        def split(y: Tensor) -> Tensor:  # (B, T, a) -> (B, h, T, hd)
            return y.view(b, t, heads, -1).transpose(1, 2)

        q = split(F.linear(x, self.q_weight[:a], self.q_bias[:a]))
        k = split(F.linear(x, self.k_weight[:a], self.k_bias[:a]))
        v = split(F.linear(x, self.v_weight[:a], self.v_bias[:a]))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, t, a)
        x = self.attn_norm(x + torch.matmul(ctx, self.attn_out_weight_t[:a]) + self.attn_out_bias)
        inner = self.act(F.linear(x, self.ffn_in_weight[:neurons], self.ffn_in_bias[:neurons]))  # (B, T, n)
        return self.ffn_norm(x + torch.matmul(inner, self.ffn_out_weight_t[:neurons]) + self.ffn_out_bias)


class DynsparseHead(nn.Module):
    """The task's head under dynsparse's weight names (`head.pool`, `head.classifier`, `head.qa_outputs`)."""

    def __init__(self, task: str, s: dict[str, Any], pool_act: str) -> None:
        super().__init__()
        self.task = task
        if task == "text-classification":
            self.pool = nn.Linear(s["hidden"], s["hidden"])
            self.act = ACT2FN[pool_act]
        if task in ("text-classification", "token-classification"):
            self.classifier = nn.Linear(s["hidden"], s["num_labels"])
        if task == "question-answering":
            self.qa_outputs = nn.Linear(s["hidden"], 2)

    def forward(self, hidden: Tensor, mask: Tensor | None) -> Tensor:
        if self.task == "text-classification":
            return self.classifier(self.act(self.pool(hidden[:, 0])))  # (B, C)
        if self.task == "token-classification":
            return self.classifier(hidden)  # (B, T, C)
        if self.task == "question-answering":
            return self.qa_outputs(hidden)  # (B, T, 2)
        return mean_pool(hidden, mask)  # (B, H)


def mean_pool(hidden: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of the real (non-padding) tokens' states (B, H)."""
    if mask is None:
        return hidden.mean(1)
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


# -- sizes: the rules of dynsparse.masks --------------------------------------------------------------------------
def keep_count(total: int, sparsity: float) -> int:
    return max(1, min(total, math.floor((1.0 - sparsity) * total + 0.5)))


def global_structure(
    sparsity: float, head_scores: Tensor, neuron_scores: Tensor, head_cost: int, neuron_cost: int
) -> Structure:
    """One ranking of all units by importance per parameter; keep the longest prefix within (1 - s) of the cost."""
    layers, heads = head_scores.shape  # (L, H)
    neurons = neuron_scores.shape[1]  # (L, F)
    h = head_scores.double().clamp_min(0)
    n = neuron_scores.double().clamp_min(0)
    ratio = torch.cat(
        [(h / h.sum().clamp_min(1e-12) / head_cost).flatten(), (n / n.sum().clamp_min(1e-12) / neuron_cost).flatten()]
    )
    layer = torch.cat([torch.arange(layers).repeat_interleave(heads), torch.arange(layers).repeat_interleave(neurons)])
    is_head = torch.cat([torch.ones(layers * heads, dtype=torch.bool), torch.zeros(layers * neurons, dtype=torch.bool)])
    pos = torch.cat([torch.arange(heads).repeat(layers), torch.arange(neurons).repeat(layers)])
    ratio = torch.where(pos == 0, torch.full_like(ratio, math.inf), ratio)  # >= 1 head and neuron per layer
    order = torch.sort(-ratio, stable=True).indices
    cost = torch.where(is_head, float(head_cost), float(neuron_cost)).double()[order]
    budget = torch.tensor((1.0 - sparsity) * float(cost.sum()) + 1e-6, dtype=torch.float64)
    cut = max(int(torch.searchsorted(cost.cumsum(0), budget, right=True)), 2 * layers)
    layer, is_head = layer[order][:cut], is_head[order][:cut]
    kept_h = torch.bincount(layer[is_head], minlength=layers)
    kept_n = torch.bincount(layer[~is_head], minlength=layers)
    return tuple((int(a), int(b)) for a, b in zip(kept_h, kept_n, strict=True))


class DynsparsePreTrainedModel(PreTrainedModel):
    """The elastic encoder (and the task's head): `forward(..., sparsity=s, depth=d)` runs any size."""

    config_class = DynsparseConfig
    base_model_prefix = "dynsparse"
    main_input_name = "input_ids"
    _keys_to_ignore_on_load_unexpected = [r"language_(head|neuron)_scores"]  # per-language orderings: dynsparse only
    _with_head = True
    head_scores: Tensor  # (L, H), elastic checkpoints only
    neuron_scores: Tensor  # (L, F)

    def __init__(self, config: DynsparseConfig) -> None:
        super().__init__(config)
        d = config.dynsparse
        s = d["shape"]
        self.shape, self.task, self.allocation = s, d["task"], d.get("allocation", "uniform")
        self.fixed: Structure | None = tuple(map(tuple, d["layer_sizes"])) if d.get("layer_sizes") else None
        sizes = self.fixed or ((s["heads"], s["intermediate"]),) * s["layers"]
        self.embeddings = DynsparseEmbeddings(s, d.get("padded_positions", False), d.get("kept_vocab"))
        self.layers = nn.ModuleList(DynsparseLayer(s, h, n) for h, n in sizes)
        if self.fixed is None:  # the importance scores fix the global allocation's ranking
            self.register_buffer("head_scores", torch.zeros(s["layers"], s["heads"]))  # (L, H)
            self.register_buffer("neuron_scores", torch.zeros(s["layers"], s["intermediate"]))  # (L, F)
        self.layer_order: list[int] = list(d.get("layer_order") or range(s["layers"]))
        if self._with_head:
            self.head = DynsparseHead(self.task, s, d.get("pool_act", "tanh"))
        self._structures: dict[tuple[float, int | None], Structure] = {}
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:  # only for weights a file lacks
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, DynsparseLayer):
            for w in (
                module.q_weight,
                module.k_weight,
                module.v_weight,
                module.attn_out_weight_t,
                module.ffn_in_weight,
                module.ffn_out_weight_t,
            ):
                nn.init.normal_(w, std=0.02)

    def structure(self, sparsity: float | None = None, depth: int | None = None) -> Structure:
        """Per layer, the (heads, neurons) kept at `sparsity` and `depth` (default: the config's)."""
        sparsity = self.config.sparsity if sparsity is None else float(sparsity)
        depth = self.config.depth if depth is None else depth
        if self.fixed is not None:
            if sparsity != 0.0 or depth not in (None, len(self.fixed)):
                raise ValueError(f"this is one fixed size {self.fixed}; it takes no sparsity or depth")
            return self.fixed
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        key = (sparsity, depth)
        if key not in self._structures:
            self._structures[key] = self._drop_layers(self._width(sparsity), depth)
        return self._structures[key]

    def _width(self, sparsity: float) -> Structure:
        s = self.shape
        if self.allocation == "global":
            hd = s["hidden"] // s["heads"]
            head_cost, neuron_cost = 4 * s["hidden"] * hd + 3 * hd, 2 * s["hidden"] + 1
            return global_structure(sparsity, self.head_scores.cpu(), self.neuron_scores.cpu(), head_cost, neuron_cost)
        return ((keep_count(s["heads"], sparsity), keep_count(s["intermediate"], sparsity)),) * s["layers"]

    def _drop_layers(self, width: Structure, depth: int | None) -> Structure:
        if depth is None or depth == len(width):
            return width
        if not 1 <= depth <= len(width):
            raise ValueError(f"depth must be from 1 to {len(width)} layers, got {depth}")
        kept = set(self.layer_order[:depth])
        return tuple(hn if i in kept else (0, 0) for i, hn in enumerate(width))

    def encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        token_type_ids: Tensor | None,
        sparsity: float | None,
        depth: int | None,
    ) -> Tensor:
        """The last hidden states (B, T, H) at a size."""
        mask = attention_mask.bool()[:, None, None, :] if attention_mask is not None else None  # (B, 1, 1, T)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        for layer, (heads, neurons) in zip(self.layers, self.structure(sparsity, depth), strict=True):
            if heads or neurons:  # (0, 0): dropped by depth
                x = layer(x, mask, heads, neurons)
        return x


def _labels_loss(logits: Tensor, labels: Tensor | None) -> Tensor | None:
    return None if labels is None else F.cross_entropy(logits.flatten(0, -2), labels.flatten(), ignore_index=-100)


class DynsparseModel(DynsparsePreTrainedModel):
    """`AutoModel`: the last hidden states; `pooler_output` is the normalised mean of the real tokens (the
    checkpoint's sentence embedding, as dynsparse's /v1/embed returns it)."""

    _with_head = False
    _keys_to_ignore_on_load_unexpected = [r"language_(head|neuron)_scores", r"^head\."]

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        sparsity: float | None = None,
        depth: int | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPooling:
        hidden = self.encode(input_ids, attention_mask, token_type_ids, sparsity, depth)
        pooled = F.normalize(mean_pool(hidden, attention_mask), dim=-1)  # (B, H)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)


class DynsparseForSequenceClassification(DynsparsePreTrainedModel):
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        sparsity: float | None = None,
        depth: int | None = None,
        labels: Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        hidden = self.encode(input_ids, attention_mask, token_type_ids, sparsity, depth)
        logits = self.head(hidden, attention_mask)  # (B, C)
        return SequenceClassifierOutput(loss=_labels_loss(logits, labels), logits=logits)


class DynsparseForTokenClassification(DynsparsePreTrainedModel):
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        sparsity: float | None = None,
        depth: int | None = None,
        labels: Tensor | None = None,
        **kwargs: Any,
    ) -> TokenClassifierOutput:
        hidden = self.encode(input_ids, attention_mask, token_type_ids, sparsity, depth)
        logits = self.head(hidden, attention_mask)  # (B, T, C)
        return TokenClassifierOutput(loss=_labels_loss(logits, labels), logits=logits)


class DynsparseForQuestionAnswering(DynsparsePreTrainedModel):
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        sparsity: float | None = None,
        depth: int | None = None,
        **kwargs: Any,
    ) -> QuestionAnsweringModelOutput:
        hidden = self.encode(input_ids, attention_mask, token_type_ids, sparsity, depth)
        start, end = self.head(hidden, attention_mask).split(1, dim=-1)  # (B, T, 1) each
        return QuestionAnsweringModelOutput(
            start_logits=start.squeeze(-1).contiguous(), end_logits=end.squeeze(-1).contiguous()
        )
