"""The commands as a user runs them: real subprocesses, exit codes, one-line errors, files written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model_name_or_path", "/no/such/model"], "does not exist"),
        (["--model_name_or_path", "{tiny}/bert", "--train_file", "/no/such.csv"], "does not exist"),
        (
            ["--model_name_or_path", "{tiny}/bert", "--train_file", "{tiny}/train.csv", "--max_sparsity", "1.5"],
            "max_sparsity",
        ),
        (
            ["--model_name_or_path", "{tiny}/bert", "--train_file", "{tiny}/train.csv", "--label_column", "y"],
            "label column 'y' not found",
        ),
        (["--max_steps", "many"], "invalid int value"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    tiny_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    r = run("train.py", *[a.format(tiny=tiny_dir) for a in args], "--output_dir", str(out), "--max_steps", "2")
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_unsupported_architecture(tmp_path: Path) -> None:
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    r = run("train.py", "--model_name_or_path", str(tmp_path / "gpt"), "--train_file", "x.csv")
    assert r.returncode == 2 and "unsupported architecture 'gpt2'" in r.stderr


def test_evaluate_and_profile_a_checkpoint(tiny_ckpt: Path, tiny_dir: Path, tmp_path: Path) -> None:
    r = run(
        "-m",
        "dynsparse.cli",
        "evaluate",
        str(tiny_ckpt),
        "--validation_file",
        str(tiny_dir / "validation.csv"),
        "--output_dir",
        str(tmp_path / "ev"),
        "--levels",
        "0",
        "0.5",
        "0.9",
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "ev" / "levels.json").read_text())
    assert [row["sparsity"] for row in doc["levels"]] == [0.0, 0.5, 0.9]
    for key in ("accuracy", "f1", "params", "params_encoder", "params_embeddings", "flops", "latency_ms"):
        assert key in doc["levels"][0]
    assert (tmp_path / "ev" / "levels.png").stat().st_size > 1000
    assert "accuracy" in r.stdout  # the table is printed
    r = run(
        "-m",
        "dynsparse.cli",
        "profile",
        str(tiny_ckpt),
        "--levels",
        "0",
        "0.9",
        "--batch_sizes",
        "1",
        "--seq_lens",
        "16",
    )
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 3


def test_evaluate_bad_checkpoint_and_sparsity(tiny_dir: Path, tmp_path: Path) -> None:
    r = run("-m", "dynsparse.cli", "evaluate", str(tmp_path), "--validation_file", "x.csv", "--output_dir", "o")
    assert r.returncode == 2 and "dynsparse.json is missing" in r.stderr or "is missing" in r.stderr
    r = run(
        "-m",
        "dynsparse.cli",
        "evaluate",
        str(tmp_path),
        "--validation_file",
        "x.csv",
        "--output_dir",
        "o",
        "--levels",
        "1.2",
    )
    assert r.returncode == 2 and "sparsity must be in [0, 1)" in r.stderr


def test_profile_in_a_reduced_dtype(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    r = run(
        "-m",
        "dynsparse.cli",
        "profile",
        str(tiny_ckpt),
        "--levels",
        "0.5",
        "--batch_sizes",
        "1",
        "--seq_lens",
        "8",
        "--dtype",
        "bfloat16",
        "--output",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["dtype"] == "bfloat16" and len(doc["rows"]) == 1 and doc["rows"][0]["latency_ms"] > 0
    r = run("-m", "dynsparse.cli", "profile", str(tiny_ckpt), "--dtype", "int8")
    assert r.returncode == 2 and "invalid choice" in r.stderr
