"""Checkpoints from anyone: hostile JSON in dynsparse.json, config.json and the tokenizer files, and hostile
pickles in a training state, are refused with one `CheckpointError` naming the file (CLI: one line, exit 2),
never a traceback, a hang or a huge allocation. (test_checkpoint.py holds the ordinary broken files.)"""

import json
import pickle
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import dynsparse
from dynsparse.cli import main
from dynsparse.config import DataArguments, ModelArguments, SparsityArguments, TrainArguments
from dynsparse.errors import CheckpointError
from dynsparse.recipe import run_training

DEEP = "[" * 100_000 + "]" * 100_000  # json's recursion limit, not a crash
BIG_INT = "1" + "0" * 5000  # over Python's 4300-digit limit for int()


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("hostile") / "ckpt"
    shutil.copytree(tiny_ckpt, dst, ignore=shutil.ignore_patterns("checkpoint-*", "*.png"))
    return dst


def _variant(src: Path, dst: Path, name: str, edit: Callable[[Any], Any] | str) -> Path:
    """A copy of `src` whose file `name` is `edit` (raw text) or `edit(parsed JSON)` written back."""
    shutil.copytree(src, dst)
    text = edit if isinstance(edit, str) else json.dumps(edit(json.loads((src / name).read_text())))
    (dst / name).write_text(text)
    return dst


def _put(**fields: Any) -> Callable[[dict], dict]:
    return lambda d: {**d, **fields}


def _first_level(row: Any) -> Callable[[dict], dict]:
    return lambda d: {**d, "levels": [row, *d["levels"][1:]]}


META_CASES: dict[str, Callable[[Any], Any] | str] = {
    "nested 100000 deep": DEEP,
    "nested inside a field": '{"format_version": 1, "junk": ' + DEEP + "}",
    "a 5000-digit number": lambda d: d,  # replaced below: json.dumps cannot write it
    "10**400 as sparsity max": _put(sparsity_range=[0, 10**400]),
    "1e308 as sparsity max": _put(sparsity_range=[0, 1e308]),
    "negative sparsity min": _put(sparsity_range=[-5, 0.5]),
    "NaN in the range": _put(sparsity_range=[float("nan"), 0.5]),
    "labels of the wrong type": _put(labels=[1, 2]),
    "labels not a list": _put(labels="ab"),
    "one label for two classes": _put(labels=["x"]),
    "a level that is a string": _first_level("sparsity"),
    "a level with a text sparsity": _first_level({"sparsity": "big"}),
    "a level with a negative sparsity": _first_level({"sparsity": -1}),
    "files of the wrong type": _put(files={"model.safetensors": ["sha"]}),
    "family of the wrong type": _put(family=5),
    "unknown allocation": _put(allocation="random"),
    "a task that is a list": _put(task=["x"]),
    "a 40 MB string": _put(family="x" * 40_000_000),
    "not an object": "[1, 2, 3]",
    "ordering not an object": _put(ordering=[1]),
    "languages not a list": _put(ordering={"languages": "de"}),
    "a 10 MB language name": _put(ordering={"languages": ["x" * 10_000_000]}),
    "languages without their scores": _put(ordering={"languages": ["de", "en"]}),
    "depth not an object": _put(depth=3),
    "a depth order missing a layer": _put(depth={"order": [0, 0]}),
    "a depth order of strings": _put(depth={"order": ["0", "1"]}),
    "min_layers beyond the layers": _put(depth={"order": [1, 0], "min_layers": 10**9}),
}
CONFIG_CASES: dict[str, Callable[[Any], Any] | str] = {
    "nested 100000 deep": DEEP,
    "not an object": "[1, 2]",
    "10**10 words": _put(vocab_size=10**10),
    "a million layers": _put(num_hidden_layers=10**6),
    "a billion labels": _put(num_labels=10**9),
    "10**400 FFN neurons": _put(intermediate_size=10**400),
    "1e308 hidden size": _put(hidden_size=1e308),
    "negative layers": _put(num_hidden_layers=-3),
    "zero heads": _put(num_attention_heads=0),
    "hidden size as text": _put(hidden_size="abc"),
    "10**11 positions": _put(max_position_embeddings=10**11),
    "more layers than stored": _put(num_hidden_layers=3),
    "a 40 MB string": _put(junk="x" * 40_000_000),
    "unknown model type": _put(model_type="gpt2"),
}
TOKENIZER_CASES: dict[str, tuple[str, str]] = {
    "tokenizer.json nested 100000 deep": ("tokenizer.json", DEEP),
    "tokenizer_config.json nested deep": ("tokenizer_config.json", '{"a": ' + DEEP + "}"),
    "tokenizer_config.json a list": ("tokenizer_config.json", "[1]"),
    "tokenizer.json not JSON": ("tokenizer.json", "\xff\xfe garbage"),
}


def _refused(path: Path, file: str) -> str:
    """Load `path`: it must fail fast, with one CheckpointError naming `file`, and allocate little."""
    before, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.monotonic()
    with pytest.raises(CheckpointError) as info:
        dynsparse.load(str(path))
    message = str(info.value)
    assert file in message and "\n" not in message and len(message) < 600, message
    assert time.monotonic() - t0 < 20
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 400, f"{grown_mb:.0f} MB more peak memory"  # the file itself (~40 MB) is read at most
    return message


@pytest.mark.parametrize("case", META_CASES, ids=list(META_CASES))
def test_hostile_dynsparse_json_is_refused(ckpt: Path, tmp_path: Path, case: str) -> None:
    edit = META_CASES[case]
    if case == "a 5000-digit number":
        edit = (ckpt / "dynsparse.json").read_text().replace('"format_version": 1', '"format_version": ' + BIG_INT)
    _refused(_variant(ckpt, tmp_path / "c", "dynsparse.json", edit), "dynsparse.json")


@pytest.mark.parametrize("case", CONFIG_CASES, ids=list(CONFIG_CASES))
def test_hostile_config_json_is_refused(ckpt: Path, tmp_path: Path, case: str) -> None:
    _refused(_variant(ckpt, tmp_path / "c", "config.json", CONFIG_CASES[case]), "config.json")


@pytest.mark.parametrize("case", TOKENIZER_CASES, ids=list(TOKENIZER_CASES))
def test_hostile_tokenizer_files_are_refused(ckpt: Path, tmp_path: Path, case: str) -> None:
    name, text = TOKENIZER_CASES[case]
    _refused(_variant(ckpt, tmp_path / "c", name, text), "tokenizer")


def test_nan_metrics_still_load(ckpt: Path, tmp_path: Path) -> None:
    """A metric can be NaN (a correlation of constant predictions): not a reason to refuse the checkpoint."""
    nan_f1 = _first_level({"sparsity": 0.0, "f1": float("nan")})
    model = dynsparse.load(str(_variant(ckpt, tmp_path / "c", "dynsparse.json", nan_f1)))
    assert model.meta.levels[0]["f1"] != model.meta.levels[0]["f1"]


@pytest.mark.parametrize("command", ["export", "serve", "evaluate"])
def test_the_cli_refuses_in_one_line_with_exit_2(
    ckpt: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], command: str
) -> None:
    bad = _variant(ckpt, tmp_path / "c", "config.json", _put(vocab_size=10**10))
    argv = {
        "export": ["export", str(bad), "--sparsity", "0.5", "--format", "torch", "--output", str(tmp_path / "x")],
        "serve": ["serve", str(bad), "--port", "0"],
        "evaluate": ["evaluate", str(bad), "--validation_file", "v.csv", "--output_dir", str(tmp_path / "e")],
    }
    assert main(argv[command]) == 2
    err = capfd.readouterr().err
    assert "config.json: sizes must be positive integers" in err and "Traceback" not in err, err
    assert not (tmp_path / "x").exists() and not (tmp_path / "e").exists()


class _Payload:
    """A pickle that runs code when loaded: torch.load(weights_only=True) must refuse it, not run it."""

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path("/tmp/dynsparse-pwned"),))


@pytest.fixture(scope="module")
def trained(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output folder with a training state, checkpoint-2."""
    return _train(tiny_dir, tmp_path_factory.mktemp("state") / "run")


def _train(tiny_dir: Path, out: Path, **resume: str) -> Path:
    return run_training(
        ModelArguments(model_name_or_path=str(tiny_dir / "bert")),
        DataArguments(train_file=str(tiny_dir / "train.csv")),
        SparsityArguments(),
        TrainArguments(output_dir=str(out), max_steps=2, save_steps=2, **resume),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("file", ["optimizer.pt", "scheduler.pt", "rng_state.pt"])
def test_a_hostile_pickle_in_a_training_state_is_refused_unrun(
    tiny_dir: Path, trained: Path, tmp_path: Path, file: str
) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    with open(out / "checkpoint-2" / file, "wb") as f:
        pickle.dump({"state": _Payload()}, f, protocol=2)
    marker = Path("/tmp/dynsparse-pwned")
    marker.unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match=f"{file}: unreadable training state"):
        _train(tiny_dir, out, resume_from_checkpoint=str(out / "checkpoint-2"))
    assert not marker.exists()
