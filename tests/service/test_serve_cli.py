"""`dynsparse serve`: settings from flags and environment, one-line errors (the contract runs the server)."""

import argparse
import shutil
from pathlib import Path

import pytest

from dynsparse.cli import build_parser, main
from dynsparse.errors import InputError
from service.cli import build_settings


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNSPARSE_PORT", "9000")
    monkeypatch.setenv("DYNSPARSE_MAX_BATCH_SIZE", "8")
    args = build_parser().parse_args(["serve", "ck", "--port", "9100", "--levels", "0.5", "0", "--dtype", "float32"])
    s = build_settings(args)
    assert (s.port, s.max_batch_size, s.levels, s.dtype, str(s.checkpoint)) == (9100, 8, [0.0, 0.5], "float32", "ck")


def test_a_bad_setting_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNSPARSE_QUEUE_LIMIT", "many")
    with pytest.raises(InputError, match="queue_limit.*DYNSPARSE_QUEUE_LIMIT"):
        build_settings(argparse.Namespace(checkpoint="ck"))


def test_a_missing_checkpoint_exits_2_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", str(tmp_path / "nope"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "no such checkpoint directory" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_broken_checkpoint_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("model.safetensors", "config.json"):
        (tmp_path / name).write_text("x")
    (tmp_path / "dynsparse.json").write_text("{}")
    assert main(["serve", str(tmp_path)]) == 2
    assert "format_version" in capsys.readouterr().err


def test_a_checkpoint_failing_in_the_lifespan_exits_2(
    tiny_ckpt: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(tiny_ckpt, bad)
    with open(bad / "model.safetensors", "ab") as f:
        f.write(b"garbage")  # passes the quick check, fails the full load (checksum)
    assert main(["serve", str(bad), "--port", "0"]) == 2
    err = capfd.readouterr().err
    assert "checksum does not match" in err and "Traceback" not in err
