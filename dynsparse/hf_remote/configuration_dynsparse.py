"""transformers' config of a dynsparse checkpoint or fixed-size export (shipped beside its weights).

`config.json` holds the base encoder's own config fields at the top level (dynsparse rebuilds the base encoder
from them: `base_model_type` is their `model_type`) and, under `dynsparse`, what this code needs: the encoder's
shape, the task, the allocation rule, the depth order, and for a fixed-size export the kept (heads, neurons) of
each layer.
"""

from typing import Any

from transformers import PretrainedConfig


class DynsparseConfig(PretrainedConfig):
    """The base config's fields plus `dynsparse` (a dict, see the module doc). `sparsity` and `depth` pick the size
    a loaded checkpoint runs at when a forward call names none: `from_pretrained(CKPT, sparsity=0.5)` sets them."""

    model_type = "dynsparse"

    def __init__(
        self, dynsparse: dict[str, Any] | None = None, sparsity: float = 0.0, depth: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.dynsparse = dict(dynsparse or {})
        self.sparsity = float(sparsity)
        self.depth = depth
