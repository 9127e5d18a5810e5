"""dynsparse: train a transformer encoder once, run it at any sparsity from one checkpoint."""

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # keep transformers' import-time notices off the CLI

from dynsparse.errors import CheckpointError, InputError
from dynsparse.modeling import ElasticModel, EncoderOutput
from dynsparse.pretrained import from_pretrained

__version__ = "0.1.0"


def load(path: str, device: str | None = None) -> ElasticModel:
    """Load a dynsparse checkpoint directory (see `dynsparse.checkpoint`)."""
    from dynsparse.checkpoint import load_checkpoint

    return load_checkpoint(path, device=device)


__all__ = ["CheckpointError", "ElasticModel", "EncoderOutput", "InputError", "from_pretrained", "load"]
