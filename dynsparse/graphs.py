"""Each size as a TorchScript graph, traced once over the model's own weights: no Python and no GIL per op.

An eager forward runs ~100 small ops, and each one gives the GIL back and takes it again when it returns.
In a server, the event loop holds the GIL in between (HTTP, JSON), so each op waits for it. Measured on 2 cores
(MiniLM, one sentence, one torch thread, a second thread busy in Python 30% of the time, like a loaded server's
loop): eager 10.3 ms at sparsity 0.9 and 25.8 ms at 0.5, traced 4.4 and 13.1 ms. With nothing else running it is
still 1.4x faster at 0.9 (3.6-4.1 vs 5.7 ms) and 1.1x at 0.5. A call runs the whole graph in C++, with the GIL
released.

Every graph reads the model's parameters in place; its size's prefix slices are views that are taken inside the
graph, so a graph holds no weights of its own. A server warms its sizes' graphs at start-up; any other key (a
one-off sparsity, a depth, a language, text pairs) runs eagerly until its `trace_after`-th use. Keys are traced on
a synthetic batch (~100-250 ms each for MiniLM on this CPU):
- a padded batch uses the unpadded path (`dynsparse.packing`), traced on heavy padding so the packing is recorded;
- a batch without padding uses a graph with no mask (SDPA's fast path), as eager does.
Shapes stay dynamic: the tracer records sizes as graph ops (checked against eager on unseen shapes in the tests).

TorchScript is deprecated in favour of torch.compile and torch.export, and torch says tracing may break on Python
3.14+. It is used because it measured faster here: torch.compile per size was 0.74x the eager speed at 1 x 16 and
took 27-59 s per size. On Python 3.14+ the server defaults to eager (`TRACING_SUPPORTED`), and a key whose trace
fails runs eagerly, with one warning.
"""

import logging
import sys
import threading
import time
import warnings
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn

from dynsparse.masks import Structure

if TYPE_CHECKING:
    from dynsparse.modeling import ElasticModel

log = logging.getLogger(__name__)

TRACING_SUPPORTED = sys.version_info < (3, 14)  # torch.jit.trace "is not supported in Python 3.14+ and may break"


class GraphKey(NamedTuple):
    """What a traced graph is specific to; shapes are not part of it."""

    structure: Structure
    language: str | None
    head: bool  # the task head's logits (else the encoder's last hidden states)
    padded: bool  # takes an attention mask (and unpads); else every position is a real token
    types: bool  # takes token type ids


class _Size(nn.Module):
    """One key's forward with tensor-only inputs: what `torch.jit.trace` records."""

    def __init__(self, model: "ElasticModel", key: GraphKey) -> None:
        super().__init__()
        self.model = model  # shared, not copied: the traced module keeps the same parameters
        self.key = key

    def forward(self, ids: Tensor, *rest: Tensor) -> Tensor:
        mask = rest[0] if self.key.padded else None
        types = rest[-1] if self.key.types else None
        k = self.key
        if k.head:
            out = self.model(ids, mask, types, structure=k.structure, language=k.language, unpad=k.padded)
            return out.logits
        return self.model.encode(ids, mask, types, structure=k.structure, language=k.language, unpad=k.padded)


class SizeGraphs:
    """Traced graphs of one model, one per `GraphKey`, made on first use.

    Example:
        >>> graphs = SizeGraphs(model)
        >>> hidden = graphs.run(ids, mask, None, model.structure(0.5))  # == model.encode(..., unpad=True)
    """

    def __init__(self, model: "ElasticModel", trace_after: int = 2, capacity: int = 256) -> None:
        self.model = model
        self.trace_after = trace_after  # uses of a key not warmed before it is traced (one-off sizes stay eager)
        self.capacity = capacity  # graphs kept at most; past it new keys run eagerly (clients may send any float)
        self._graphs: dict[GraphKey, torch.jit.ScriptModule | None] = {}  # None: its trace failed, runs eagerly
        self._uses: dict[GraphKey, int] = {}
        self._lock = threading.Lock()  # the engine runs on one worker thread; other callers may share a SizeGraphs

    def __len__(self) -> int:
        """Graphs traced (and not failed)."""
        return sum(g is not None for g in self._graphs.values())

    @torch.inference_mode()
    def run(
        self,
        ids: Tensor,
        mask: Tensor,
        types: Tensor | None,
        structure: Structure,
        language: str | None = None,
        head: bool = False,
    ) -> Tensor:
        """The forward at `structure`: logits with `head`, else the last hidden states (B, T, H), as eager
        `model(..., unpad=True)` / `model.encode(..., unpad=True)` give them on real tokens. A padded batch always
        takes the unpadded path here (eager skips it below 10% padding), so padding positions may differ."""
        padded = not bool(mask.all())
        key = GraphKey(structure, language, head, padded, types is not None)
        graph = self._graphs[key] if key in self._graphs else self._on_use(key)
        run = graph if graph is not None else _Size(self.model, key)  # eager: the same forward, op by op
        return run(*_inputs(key, ids, mask, types))

    def _on_use(self, key: GraphKey) -> torch.jit.ScriptModule | None:
        """Trace `key` once it has been asked for `trace_after` times (and there is room); None: run eagerly."""
        if len(self._uses) > 4 * self.capacity:  # the counts of keys that never came back
            self._uses.clear()
        self._uses[key] = self._uses.get(key, 0) + 1
        if self._uses[key] < self.trace_after or len(self._graphs) >= self.capacity:
            return None
        return self.graph(key)

    def warm(self, structure: Structure, head: bool = False, runs: int = 2) -> None:
        """Trace `structure`'s graphs for padded and unpadded batches and run each `runs` times: TorchScript
        optimises a graph on its second run, which took 40-50 ms on a small size (first calls, not requests)."""
        for padded in (True, False):
            self.graph(GraphKey(structure, None, head, padded, False))
        ids, mask = _example(self.model)
        for _ in range(runs):
            self.run(ids, mask, None, structure, head=head)
            self.run(ids[:1, :2], mask[:1, :2], None, structure, head=head)

    def graph(self, key: GraphKey) -> torch.jit.ScriptModule | None:
        """`key`'s graph, traced now if it is new; None if its trace failed."""
        if key not in self._graphs:
            with self._lock:
                if key not in self._graphs:
                    self._graphs[key] = self._trace(key)
        return self._graphs[key]

    def _trace(self, key: GraphKey) -> torch.jit.ScriptModule | None:
        ids, mask = _example(self.model)
        args = _inputs(key, ids, mask, torch.zeros_like(ids) if key.types else None)
        began = time.perf_counter()
        with torch.no_grad(), warnings.catch_warnings():
            # the input checks before the graph (shape, language) become constants: the engine checked them
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # chosen knowingly: see the module's docstring
            try:
                graph = torch.jit.trace(_Size(self.model, key), args, check_trace=False)
            except Exception as e:  # a torch whose tracer cannot take this model: that key stays eager
                log.warning("tracing a size failed, it runs eagerly: %s: %s", type(e).__name__, e)
                return None
        log.debug("traced %s in %.0f ms", key, (time.perf_counter() - began) * 1000)
        return graph


def _inputs(key: GraphKey, ids: Tensor, mask: Tensor, types: Tensor | None) -> tuple[Tensor, ...]:
    """The tensors `key`'s graph takes, in `_Size.forward`'s order."""
    return (ids, *((mask,) if key.padded else ()), *((types,) if types is not None else ()))


def _example(model: "ElasticModel") -> tuple[Tensor, Tensor]:
    """Two rows, one of them mostly padding: a batch that takes the unpadded path (`Packing.of`)."""
    device = next(model.parameters()).device
    ids = torch.full((2, 8), 5, dtype=torch.long, device=device)
    mask = torch.ones_like(ids)
    mask[1, 2:] = 0
    return ids, mask
