"""Training states (`OUTPUT_DIR/checkpoint-STEP/`), as in transformers' Trainer: a full loadable checkpoint
plus optimizer, scheduler, RNG and trainer state.

A process killed at any moment never leaves a half-written or half-deleted `checkpoint-STEP` behind: a state is
written to a temporary folder and renamed into place, and a state is renamed out of place before it is deleted.
Temporary folders start with `.tmp-`, which `latest` never matches; the next save sweeps them away."""

import json
import os
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dynsparse.checkpoint import read_meta
from dynsparse.errors import CheckpointError, InputError
from dynsparse.modeling import ElasticModel
from dynsparse.writer import META, WEIGHTS, save_checkpoint, sha256_file

_STATE_DIR = re.compile(r"^checkpoint-(\d+)$")
_T = TypeVar("_T")


@dataclass
class TrainerState:
    step: int = 0
    rewired: bool = False
    importance_steps: int = 0


def save_state(
    out_dir: Path,
    model: ElasticModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainerState,
    scores: dict[str, torch.Tensor],
    keep: int,
    rng: list[dict[str, Any]] | None = None,
) -> Path:
    """Write checkpoint-STEP atomically and keep only the newest `keep` states.

    `rng` holds every rank's generator states in rank order (default: this process's); as in transformers,
    rank 0's go to `rng_state.pt` and rank r's to `rng_state_r.pt`.
    """
    final = out_dir / f"checkpoint-{state.step}"
    tmp = out_dir / f".tmp-checkpoint-{state.step}"
    for stale in [*out_dir.glob(".tmp-checkpoint-*"), *out_dir.glob(".tmp-delete-*")]:  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    save_checkpoint(model, tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    for rank, states in enumerate(rng or [rng_state()]):
        torch.save(states, tmp / _rng_file(rank))
    save_file({k: v.detach().cpu().contiguous() for k, v in scores.items()}, str(tmp / "importance.safetensors"))
    (tmp / "trainer_state.json").write_text(json.dumps(asdict(state)))
    _remove(final)  # the same step saved by an earlier run (resumed from an older state)
    os.replace(tmp, final)
    for old in list_states(out_dir)[:-keep] if keep > 0 else []:
        _remove(old)
    return final


def _remove(state_dir: Path) -> None:
    """Delete a state folder; renamed out of the `checkpoint-STEP` names first, so no kill leaves half of it."""
    if not state_dir.exists():
        return
    doomed = state_dir.with_name(f".tmp-delete-{state_dir.name}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(state_dir, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


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

    Every file is read and checked before anything changes; a missing, corrupt or foreign file raises a
    `CheckpointError` naming it. `rank` picks the process's own RNG file; a rank the state has none for (a run
    resumed on more processes than it was saved from) takes rank 0's.
    """
    device = next(model.parameters()).device
    weights = _read(path / WEIGHTS, lambda f: _verified_weights(f, str(device)))
    optim = _read(path / "optimizer.pt", lambda f: torch.load(f, map_location=device, weights_only=True))
    sched = _read(path / "scheduler.pt", lambda f: torch.load(f, weights_only=True))
    rng_path = path / _rng_file(rank)
    rng = _read(rng_path if rng_path.is_file() else path / _rng_file(0), lambda f: torch.load(f, weights_only=True))
    state = _read(path / "trainer_state.json", _trainer_state)
    scores = _read(path / "importance.safetensors", lambda f: load_file(str(f), device=str(device)))
    if "language_head_scores" in weights and model.language_head_scores is None:  # saved after per-language rewiring
        langs = list(_read(path / META, read_meta).ordering.languages)
        _read(
            path / WEIGHTS,
            lambda f: model.set_language_scores(
                langs, weights["language_head_scores"], weights["language_neuron_scores"]
            ),
        )
    _read(path / WEIGHTS, lambda f: model.load_state_dict(weights))  # a state of another model: shapes differ
    model.set_scores(model.head_scores.clone(), model.neuron_scores.clone())
    _read(path / "optimizer.pt", lambda f: optimizer.load_state_dict(optim))
    scheduler.load_state_dict(sched)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state, scores


def _read(file: Path, read: Callable[[Path], _T]) -> _T:
    """`read(file)`; any failure (missing, truncated, foreign, a pickle holding more than tensors) as one
    `CheckpointError` naming the file."""
    try:
        return read(file)
    except (
        OSError,
        ValueError,
        RuntimeError,
        TypeError,
        KeyError,
        EOFError,
        pickle.UnpicklingError,
        SafetensorError,
    ) as e:
        raise CheckpointError(f"{file}: unreadable training state ({type(e).__name__}: {str(e)[:200]})") from None


def _verified_weights(file: Path, device: str) -> dict[str, torch.Tensor]:
    meta = read_meta(file.parent / META)
    if sha256_file(file) != meta.weights_sha256:
        raise ValueError(f"checksum does not match {META} (corrupt or replaced file)")
    return load_file(str(file), device=device)


def _trainer_state(file: Path) -> TrainerState:
    raw = json.loads(file.read_text())
    state = TrainerState(**raw) if isinstance(raw, dict) else None
    if (
        state is None
        or not all(isinstance(v, int) and v >= 0 for v in (state.step, state.importance_steps))
        or not isinstance(state.rewired, bool)
    ):
        raise ValueError(f"expected {{'step': int, 'rewired': bool, 'importance_steps': int}}, got {raw!r:.200}")
    return state


def truncate_log(log_path: Path, step: int) -> None:
    """Drop the records of steps after `step` from train_log.jsonl (logged by the run that stopped), so a resumed
    run's records for those steps are the only ones."""
    if not log_path.is_file():
        return
    lines = log_path.read_text().splitlines(keepends=True)
    kept = [line.rstrip("\n") + "\n" for line in lines if _logged_step(line) <= step]
    tmp = log_path.with_suffix(".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(log_path)


def _logged_step(line: str) -> float:
    """The step of a train_log.jsonl line; infinity for a line a killed run left half-written (it goes)."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")
