"""dynsparse: train a transformer encoder once, run it at any sparsity from one checkpoint."""

import os

from dynsparse.errors import CheckpointError, InputError
from dynsparse.modeling import ElasticModel, EncoderOutput
from dynsparse.pretrained import from_pretrained

__version__ = "0.1.0"


def load(path: str | os.PathLike[str], device: str | None = None) -> ElasticModel:
    """Load a dynsparse checkpoint directory (see `dynsparse.checkpoint`).

    Example:
        >>> model = dynsparse.load("runs/default")
        >>> model(**model.tokenizer(["a gripping film"], return_tensors="pt"), sparsity=0.5).logits
    """
    from dynsparse.checkpoint import load_checkpoint

    return load_checkpoint(path, device=device)


def save(model: ElasticModel, path: str | os.PathLike[str]) -> None:
    """Write `model` as a checkpoint directory at `path` (see `dynsparse.checkpoint`).

    Example:
        >>> dynsparse.save(model, "runs/copy")
        >>> dynsparse.load("runs/copy").structure(0.5) == model.structure(0.5)
        True
    """
    from dynsparse.writer import save_checkpoint

    save_checkpoint(model, path)


__all__ = ["CheckpointError", "ElasticModel", "EncoderOutput", "InputError", "from_pretrained", "load", "save"]
