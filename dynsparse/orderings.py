"""Which units each size keeps: the nested importance orderings of an `ElasticModel` and the per-layer counts
(a `Structure`) they give at a sparsity, a depth and, in the non-shared setting, a language.

`UnitOrderings` is a mixin of `ElasticModel`: the scores it reads are the model's buffers (so they live in the
checkpoint's state dict and move with the model), the caches here are forgotten whenever an ordering changes."""

from dataclasses import replace

import torch
from torch import Tensor

from dynsparse.config import Allocation
from dynsparse.cost import head_cost, neuron_cost
from dynsparse.errors import InputError
from dynsparse.family import EncoderShape
from dynsparse.layers import UnitRows
from dynsparse.masks import GlobalRanking, Structure, global_structure, rank_globally, uniform_structure
from dynsparse.metadata import CheckpointMeta


class UnitOrderings:
    """Sizes from orderings: `structure` per size, a language's kept rows, the depth order (see module doc)."""

    shape: EncoderShape
    allocation: Allocation
    meta: CheckpointMeta
    head_scores: Tensor  # (L, H) buffers of the model, sorted descending per layer
    neuron_scores: Tensor  # (L, F)
    language_head_scores: Tensor | None  # (N, L, H) per-language importance of the stored units (non-shared)
    language_neuron_scores: Tensor | None  # (N, L, F)
    languages: list[str]
    layer_order: list[int]
    _structures: dict[tuple[float, int | None, str | None], Structure]
    _ranking: GlobalRanking | None
    _rows: dict[tuple[str, Structure, str], list[UnitRows]]

    def _init_orderings(self, layers: int) -> None:
        """The caches, the languages and the depth order as the checkpoint's metadata records them."""
        self._structures, self._ranking, self._rows = {}, None, {}
        self.languages = list(self.meta.ordering.languages)
        # Depth: layers ranked most important first; depth d keeps the first d of them (nested like width).
        stored_order = self.meta.depth.order if self.meta.depth else None
        self.layer_order = list(stored_order or every_other(layers))

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
