"""The importance phase of training: the scorers' side of each dense step, and the rewiring that ends it.

While the ordering is open, every dense forward runs with gates on the units (and, for `--layer_order taylor`, on
the layers); after its backward the gates' gradients go to the scorers (`dynsparse.importance`). When the phase ends,
the scores fix the ordering: the units are rewired into it, and the layers' scores fix the order depth drops them in.

`Trainer` owns the step loop and calls in here: `gates` before a dense forward, `update` after its backward,
`rewire` once, `tensors` / `load` with the training state.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from torch import Tensor

from dynsparse.config import SparsityArguments
from dynsparse.data import LANGUAGE
from dynsparse.distributed import World, average_
from dynsparse.errors import InputError
from dynsparse.importance import LanguageScorer, LearnedScorer, Scorer, TaylorScorer
from dynsparse.modeling import ElasticModel
from dynsparse.orderings import every_other
from dynsparse.rewire import rewire

log = logging.getLogger(__name__)


@dataclass
class Gates:
    """The masks of one dense forward whose gradients score the units: (L, H) and (L, F), per row (B, L, H) and
    (B, L, F) for per-language orderings; (L,) on the layers' residual branches for the Taylor depth order."""

    head: Tensor | None = None
    neuron: Tensor | None = None
    layer: Tensor | None = None


class ImportancePhase:
    """The run's scorers: the shared ordering's, one per language when orderings are per language, and the layers'.

    Example:
        >>> phase = ImportancePhase(model, sparsity, World(), torch.device("cpu"), languages=[])
        >>> gates = phase.gates(rows=16)   # head_mask / neuron_mask / layer_mask of the dense forward
        >>> ...                            # forward, backward
        >>> phase.update(gates, None)      # the gates' gradients become scores
        >>> phase.rewire(*phase.scorer.scores(), optimizer)
    """

    def __init__(
        self,
        model: ElasticModel,
        sparsity: SparsityArguments,
        world: World,
        device: torch.device,
        languages: list[str],
    ) -> None:
        self.model, self.sp, self.world, self.device = model, sparsity, world, device
        s = model.shape
        scorer = LearnedScorer if sparsity.importance == "learned" else TaylorScorer
        self.scorer: Scorer = scorer(s.layers, s.heads, s.intermediate, device)
        self.gated = sparsity.importance in ("taylor", "learned")  # estimated from gates in dense forwards
        self.languages = languages
        self.lang_scorer = LanguageScorer(languages, s.layers, s.heads, s.intermediate, device) if languages else None
        self.layer_scores = torch.zeros(s.layers, device=device)  # accumulated |g * dL/dg| of layer gates
        self.layer_steps = 0

    def gates(self, rows: int) -> Gates:
        """Fresh gates for a dense forward of `rows` rows."""
        head, neuron = self.lang_scorer.gates(rows) if self.lang_scorer else self.scorer.gates()
        layer = None
        if self.sp.layer_order == "taylor":
            layer = torch.ones(self.model.shape.layers, device=self.device, requires_grad=True)
        return Gates(head, neuron, layer)

    def update(self, gates: Gates, languages: list[str] | None, loss_scale: float | None = None) -> None:
        """Score the units and layers from the gates' gradients after the dense backward; `loss_scale` is fp16's
        gradient scale (divided out first), `languages` each row's language under per-language orderings."""
        if loss_scale is not None:
            _unscale(loss_scale, gates.head, gates.neuron, gates.layer)
        if self.lang_scorer is not None and languages is not None:
            assert isinstance(self.scorer, TaylorScorer) and gates.head is not None and gates.neuron is not None
            self.scorer.add(*self.lang_scorer.update(gates.head, gates.neuron, languages))
        else:
            self._update_scorer(gates.head, gates.neuron)
        if gates.layer is not None:
            self._update_layer_scores(gates.layer)

    def rewire(self, head_scores: Tensor, neuron_scores: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Fix the ordering: units permuted into score order (Adam's moments with them), the layers' order set."""
        if self.gated:
            self.scorer.fold(self.model)  # learned gates become part of the weights (Taylor's are ones)
        if self.lang_scorer is not None:  # as the units stand now; `rewire` moves them with their units
            self.model.set_language_scores(self.languages, *self.lang_scorer.scores())
        rewire(self.model, head_scores, neuron_scores, optimizer)
        if self.sp.layer_order == "taylor" and self.layer_steps:
            order = torch.sort(self.layer_scores.cpu(), descending=True, stable=True).indices.tolist()
            self.model.set_layer_order(order, "taylor")

    def tensors(self) -> dict[str, Tensor]:
        """The scores as the training state stores them (`train_state.save_state`'s `scores`)."""
        scores = {
            "head": self.scorer.head_scores,
            "neuron": self.scorer.neuron_scores,
            "steps": torch.tensor([self.scorer.steps]),
            "layer": self.layer_scores,
            "layer_steps": torch.tensor([self.layer_steps]),
            "layer_order": torch.tensor(self.model.layer_order),
        }
        if self.lang_scorer is not None:
            scores.update(
                lang_head=self.lang_scorer.head_scores,
                lang_neuron=self.lang_scorer.neuron_scores,
                lang_steps=self.lang_scorer.steps,
            )
        return scores

    def load(self, scores: dict[str, Tensor], path: Path) -> None:
        """Take the scores back from the training state at `path` (what `tensors` wrote)."""
        self.scorer.load(scores["head"], scores["neuron"], int(scores["steps"][0]))
        if self.lang_scorer is not None and "lang_head" in scores:
            if scores["lang_head"].shape[0] != len(self.languages):
                raise InputError(
                    f"{path}: its per-language scores are for {scores['lang_head'].shape[0]} languages, "
                    f"the training data has {len(self.languages)}"
                )
            ls = self.lang_scorer
            ls.head_scores, ls.neuron_scores = scores["lang_head"], scores["lang_neuron"]
            ls.steps = scores["lang_steps"]
        if "layer" in scores:  # states written before elastic depth have none
            self.layer_scores, self.layer_steps = scores["layer"].to(self.device), int(scores["layer_steps"][0])
            self.model.set_layer_order(scores["layer_order"].tolist(), self.sp.layer_order)

    def _update_scorer(self, head_gate: Tensor | None, neuron_gate: Tensor | None) -> None:
        """Add the gates' gradients to the Taylor scores, averaged over ranks first: the gates are not parameters,
        so DDP leaves them alone, and every rank needs the global batch's scores to rewire the same way."""
        if head_gate is None or neuron_gate is None or head_gate.grad is None or neuron_gate.grad is None:
            raise RuntimeError("gates have no gradient: the dense forward did not use them")
        average_(self.world, head_gate.grad, neuron_gate.grad)
        self.scorer.update(head_gate, neuron_gate)

    def _update_layer_scores(self, gate: Tensor) -> None:
        """Taylor importance of whole layers: |dL/dg| of a gate on each layer's residual branch (g = 0 drops it)."""
        if gate.grad is None:
            raise RuntimeError("the layer gate has no gradient: the dense forward did not use it")
        average_(self.world, gate.grad)
        self.layer_scores += gate.grad.detach().abs().float()
        self.layer_steps += 1


def _unscale(loss_scale: float, *gates: Tensor | None) -> None:
    """Divide the loss scale out of the gates' gradients; an overflow step's become zeros (skipping it instead
    would desynchronise the ranks' all-reduces of the scores)."""
    for g in gates:
        if g is not None and g.grad is not None:
            g.grad.div_(loss_scale).nan_to_num_(0.0, 0.0, 0.0)


def ordering_languages(train_ds: Dataset, sparsity: SparsityArguments, world: World) -> list[str]:
    """The training data's languages when each gets its own ordering (non-shared); none for shared."""
    if sparsity.orderings == "shared":
        return []
    if LANGUAGE not in train_ds.column_names:
        raise InputError("--orderings per-language needs a language column (or one training file per language)")
    if world.distributed:
        raise InputError("--orderings per-language trains in one process (not under torchrun) for now")
    values = train_ds[LANGUAGE]
    langs = sorted({str(x) for x in values})
    if len(langs) < 2:
        raise InputError(f"--orderings per-language needs at least two languages in the data, found {langs}")
    bad = [x for x in values if not isinstance(x, str) or not 0 < len(x) <= 64]
    if bad or len(langs) > 256:
        raise InputError(
            f"--orderings per-language: languages must be 1-64 character names, at most 256 of "
            f"them; found {len(langs)}, e.g. {(bad or langs)[0]!r:.80}"
        )
    return langs


def fix_depth_rule(model: ElasticModel, sparsity: SparsityArguments) -> None:
    """Record the elastic depth range and, for a fixed rule, the order layers drop in (taylor's comes at
    rewiring, from the layer gates)."""
    layers, rule = model.shape.layers, sparsity.layer_order
    model.meta = model.meta.with_depth(min_layers=sparsity.min_depth or layers)
    if rule == "every-other":
        model.set_layer_order(every_other(layers), rule)
    elif rule == "top":
        model.set_layer_order(list(range(layers)), rule)
