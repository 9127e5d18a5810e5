"""Writing a checkpoint directory (the format is described in `dynsparse.checkpoint`, which reads it).

Apart from the reader so that `ElasticModel.save` can call it: this module names the model for types only.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from dynsparse.hf_config import remote_config, write_remote
from dynsparse.metadata import FORMAT_VERSION

if TYPE_CHECKING:  # types only: modeling imports this module for `ElasticModel.save`
    from dynsparse.modeling import ElasticModel

WEIGHTS, CONFIG, META = "model.safetensors", "config.json", "dynsparse.json"
REQUIRED = (WEIGHTS, CONFIG, META)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(model: "ElasticModel", path: str | os.PathLike[str]) -> None:
    """Write `model` as a checkpoint directory at `path` (created if needed; our files replaced)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".tmp-save-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        # floats are stored as float32 whatever the serving dtype; the vocabulary map stays integer
        state = {
            k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
            for k, v in model.state_dict().items()
        }
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "dynsparse_format": str(FORMAT_VERSION)})
        write_remote(remote_config(model), tmp)
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(tmp)
        meta = model.meta.with_languages(model.languages).to_json(sha256_file(tmp / WEIGHTS))
        (tmp / META).write_text(json.dumps(meta, indent=2))
        for f in sorted(tmp.iterdir(), key=lambda p: p.name == META):  # dynsparse.json last
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
