"""How many torch threads a batch gets on CPU: one for small work, every configured thread for the rest.

With passive OpenMP waiting (what `dynsparse serve` runs with, `service/cli.py`), every parallel region wakes the
other threads through the kernel, about a hundred times per forward; for a batch of a few short texts that costs
more than the second core gives back. Measured on 2 cores (MiniLM, one worker thread, interleaved rounds): one
sentence 8.1 ms on 1 thread vs 17.6 on 2 at sparsity 0.9 and 32.9 vs 41.8 dense; 4 sentences tie dense (80.1 vs
79.9) and 1 thread wins below it; 16 dense sentences gain 6% on 2."""

import torch

from dynsparse.cost import prunable_params
from dynsparse.family import EncoderShape
from dynsparse.masks import Structure


class ThreadPlan:
    """Pick 1 or `threads` per batch by its work: real tokens times the share of the layer weights it keeps."""

    def __init__(self, threads: int, single_below: int, shape: EncoderShape) -> None:
        self.threads = threads
        self.single_below = single_below  # full-width tokens; 0: always `threads`
        self.shape = shape
        self._full = prunable_params(shape, ((shape.heads, shape.intermediate),) * shape.layers)

    def kept(self, structure: Structure) -> float:
        """The share of the encoder's layer weights a structure runs (depth-dropped layers run none)."""
        return prunable_params(self.shape, structure) / self._full

    def count(self, tokens: int, structure: Structure) -> int:
        """Threads for a batch of `tokens` real tokens at `structure`."""
        small = self.single_below > 0 and tokens * self.kept(structure) < self.single_below
        return 1 if small else self.threads

    def apply(self, tokens: int, structure: Structure) -> None:
        """Set torch's intra-op threads for the batch about to run (on the worker thread that runs it)."""
        n = self.count(tokens, structure)
        if torch.get_num_threads() != n:  # 0.4 us; the pool stays, only its width changes
            torch.set_num_threads(n)
