"""Training states (`OUTPUT_DIR/checkpoint-STEP/`), as in transformers' Trainer: a full loadable checkpoint
plus optimizer, scheduler, RNG and trainer state. Written to a temporary folder, then renamed."""

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dynsparse.checkpoint import WEIGHTS, save_checkpoint
from dynsparse.errors import InputError
from dynsparse.modeling import ElasticModel

_STATE_DIR = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainerState:
    step: int = 0
    rewired: bool = False
    importance_steps: int = 0


def save_state(
    out_dir: Path, model: ElasticModel, optimizer: torch.optim.Optimizer, scheduler: Any, state: TrainerState,
    scores: dict[str, torch.Tensor], keep: int, rng: list[dict[str, Any]] | None = None,
) -> Path:  # fmt: skip
    """Write checkpoint-STEP atomically and keep only the newest `keep` states.

    `rng` holds every rank's generator states in rank order (default: this process's); as in transformers,
    rank 0's go to `rng_state.pt` and rank r's to `rng_state_r.pt`.
    """
    final = out_dir / f"checkpoint-{state.step}"
    tmp = out_dir / f".tmp-checkpoint-{state.step}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(model, tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    for rank, states in enumerate(rng or [rng_state()]):
        torch.save(states, tmp / _rng_file(rank))
    save_file({k: v.detach().cpu().contiguous() for k, v in scores.items()}, str(tmp / "importance.safetensors"))
    (tmp / "trainer_state.json").write_text(json.dumps(asdict(state)))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_states(out_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def rng_state() -> dict[str, Any]:
    """This process's random generator states (CPU, and every GPU when there are any)."""
    rng: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _rng_file(rank: int) -> str:
    return "rng_state.pt" if rank == 0 else f"rng_state_{rank}.pt"


def list_states(out_dir: Path) -> list[Path]:
    """checkpoint-STEP folders, oldest first."""
    if not out_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out_dir.iterdir() if (m := _STATE_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_resume(spec: str, out_dir: Path) -> Path:
    """A checkpoint-STEP folder from a path or 'latest' (the newest in the output dir)."""
    if spec == "latest":
        states = list_states(out_dir)
        if not states:
            raise InputError(f"--resume_from_checkpoint latest: no checkpoint-STEP folder in {out_dir}")
        return states[-1]
    path = Path(spec)
    if not (path / "trainer_state.json").is_file():
        raise InputError(f"--resume_from_checkpoint {spec!r}: not a training state (no trainer_state.json)")
    return path


def load_state(
    path: Path, model: ElasticModel, optimizer: torch.optim.Optimizer, scheduler: Any, rank: int = 0
) -> tuple[TrainerState, dict[str, torch.Tensor]]:
    """Restore weights, optimizer, scheduler and RNG in place; returns the trainer state and importance sums.

    `rank` picks the process's own RNG file; a rank the state has none for (a run resumed on more processes
    than it was saved from) takes rank 0's.
    """
    device = next(model.parameters()).device
    model.load_state_dict(load_file(str(path / WEIGHTS), device=str(device)))
    model.set_scores(model.head_scores.clone(), model.neuron_scores.clone())
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_path = path / _rng_file(rank)
    rng = torch.load(rng_path if rng_path.is_file() else path / _rng_file(0), weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    state = TrainerState(**json.loads((path / "trainer_state.json").read_text()))
    return state, load_file(str(path / "importance.safetensors"), device=str(device))
