"""Crash safety of training: a real `dynsparse train` process is SIGKILLed at random steps and in the middle of
saving a training state, then resumed with `--resume_from_checkpoint latest`; the final weights are bit-identical
to an uninterrupted run's, and no half-written training state is ever visible."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dynsparse
from dynsparse.config import DataArguments, ModelArguments, SparsityArguments, TrainArguments
from dynsparse.recipe import run_training
from dynsparse.train_state import list_states, resolve_resume

STEPS, SAVE, BATCH, LR = 36, 4, 16, 2e-3
STATE_FILES = (
    "model.safetensors",
    "config.json",
    "dynsparse.json",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pt",
    "importance.safetensors",
    "trainer_state.json",
)


def _command(tiny_dir: Path, out: Path, resume: bool) -> list[str]:
    flags = {
        "model_name_or_path": tiny_dir / "bert",
        "train_file": tiny_dir / "train.csv",
        "output_dir": out,
        "max_steps": STEPS,
        "save_steps": SAVE,
        "per_device_train_batch_size": BATCH,
        "learning_rate": LR,
        "seed": 0,
        "logging_steps": 1,
        "eval_levels": 2,
    }
    argv = [f"--{k}={v}" for k, v in flags.items()] + (["--resume_from_checkpoint=latest"] if resume else [])
    return [sys.executable, "-m", "dynsparse.cli", "train", *argv]


def _run(cmd: list[str], log: Path, kill_when: Callable[[], bool] | None = None, timeout: float = 300) -> bool:
    """Run `cmd` to the end (True), or SIGKILL it as soon as `kill_when()` holds (False)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with open(log, "a") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if kill_when is not None and kill_when():
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    return False
                if time.monotonic() > deadline:
                    raise AssertionError(f"training did not finish in {timeout} s; see {log}")
                time.sleep(0.002)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, log.read_text()[-3000:]
    return True


def _last_step(out: Path) -> int:
    log = out / "train_log.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    for line in reversed(lines):  # the last line may be half-written when the process dies
        try:
            return int(json.loads(line)["step"])
        except ValueError:
            continue
    return 0


def _saving(out: Path) -> bool:
    return any(p.name.startswith(".tmp-checkpoint-") for p in out.iterdir()) if out.is_dir() else False


def _check_states(out: Path) -> list[int]:
    """Every visible checkpoint-STEP is whole and loads; `latest` is the newest. Returns their steps."""
    states = list_states(out)
    for state in states:
        step = int(state.name.removeprefix("checkpoint-"))
        assert all((state / f).is_file() for f in STATE_FILES), f"{state} is incomplete: {os.listdir(state)}"
        assert json.loads((state / "trainer_state.json").read_text())["step"] == step
        dynsparse.load(str(state))  # checksum, shapes, tokenizer
        for f in ("optimizer.pt", "scheduler.pt", "rng_state.pt"):
            torch.load(state / f, weights_only=True)
        load_file(str(state / "importance.safetensors"))
    if states:
        assert resolve_resume("latest", out) == states[-1]
    return [int(s.name.removeprefix("checkpoint-")) for s in states]


def _reference(tiny_dir: Path, out: Path) -> dict[str, torch.Tensor]:
    """The same run, uninterrupted, in this process (one thread, as the killed runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_training(
            ModelArguments(model_name_or_path=str(tiny_dir / "bert")),
            DataArguments(train_file=str(tiny_dir / "train.csv")),
            SparsityArguments(),
            TrainArguments(
                output_dir=str(out),
                max_steps=STEPS,
                save_steps=SAVE,
                per_device_train_batch_size=BATCH,
                learning_rate=LR,
                seed=0,
                logging_steps=1,
                eval_levels=2,
            ),
        )
    finally:
        torch.set_num_threads(threads)
    return load_file(str(out / "model.safetensors"))


def test_killed_and_resumed_training_equals_an_uninterrupted_run(tiny_dir: Path, tmp_path: Path) -> None:
    out, log = tmp_path / "killed", tmp_path / "runs.log"
    rng = random.Random(7)
    kills: list[str] = []

    # 1. killed at a random step after the first training state
    at = rng.randrange(SAVE + 1, STEPS // 2)
    assert not _run(_command(tiny_dir, out, resume=False), log, lambda: _last_step(out) >= at and _check_any(out))
    kills.append(f"step {_last_step(out)}")
    assert _check_states(out)

    # 2. killed while saving a training state, at random moments of the save, until one kill lands mid-save
    mid_save = 0
    for attempt in range(4):
        after = _last_step(out) + rng.randrange(0, SAVE)
        delay = rng.uniform(0, 0.02)  # seconds into the save
        seen: list[float] = []

        def saving_now(after: int = after, delay: float = delay, seen: list[float] = seen) -> bool:
            if _last_step(out) >= after and _saving(out):
                seen.append(seen[0] if seen else time.monotonic())
                return time.monotonic() - seen[0] >= delay or not _saving(out)
            return False

        if _run(_command(tiny_dir, out, resume=True), log, saving_now):
            pytest.fail("the run finished before it could be killed mid-save")
        left_tmp = _saving(out)  # a temporary folder left behind: the kill landed inside the save
        mid_save += left_tmp
        kills.append(f"{'mid-save' if left_tmp else 'around a save'} at step {_last_step(out)}")
        steps = _check_states(out)
        assert steps and all(s % SAVE == 0 for s in steps)
        if mid_save and attempt >= 1:
            break
    assert mid_save, f"no kill landed inside a save: {kills}"

    # 3. killed at another random step, then resumed to the end
    at = rng.randrange(_last_step(out) + 1, STEPS)
    if not _run(_command(tiny_dir, out, resume=True), log, lambda: _last_step(out) >= at):
        kills.append(f"step {_last_step(out)}")
        _check_states(out)
        assert _run(_command(tiny_dir, out, resume=True), log)

    assert not _saving(out), "a later save sweeps the temporary folders of killed ones"
    want = _reference(tiny_dir, tmp_path / "uninterrupted")
    got = load_file(str(out / "model.safetensors"))
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want), f"weights differ after kills at {kills}"
    print(f"\nkills: {kills}")


def _check_any(out: Path) -> bool:
    return bool(list_states(out))


def test_a_crash_while_deleting_an_old_state_leaves_no_half_state(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deletion of an old state (save_total_limit) dies after its first file: no `checkpoint-*` is half gone."""
    import shutil

    from dynsparse import train_state
    from dynsparse.train_state import TrainerState, save_state

    model = dynsparse.from_pretrained(str(tiny_dir / "bert"))
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    scores = {"head": torch.zeros(2, 4), "neuron": torch.zeros(2, 64), "steps": torch.tensor([0])}

    def save(step: int) -> None:
        save_state(tmp_path, model, opt, sched, TrainerState(step=step), scores, keep=2)

    save(1)
    save(2)
    real_rmtree = shutil.rmtree

    def dies_halfway(path: str | Path, ignore_errors: bool = False) -> None:
        path = Path(path)
        if path.is_dir() and path.name.endswith("checkpoint-1"):
            next(path.iterdir()).unlink()
            raise KeyboardInterrupt  # stands in for SIGKILL, which no test can catch
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(train_state.shutil, "rmtree", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save(3)
    monkeypatch.undo()
    assert _check_states(tmp_path) == [2, 3]
    save(4)  # the next save sweeps what the dead one left
    assert _check_states(tmp_path) == [3, 4] and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
