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


def _serve_environ(ckpt: Path, policy: str | None) -> tuple[str, int]:
    """Start `dynsparse serve` as an operator would; (its OMP_WAIT_POLICY once ready, /readyz status)."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | (
        {"OMP_WAIT_POLICY": policy} if policy else {}
    )
    cmd = [sys.executable, "-m", "dynsparse.cli", "serve", str(ckpt), "--port", str(port), "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        status, deadline = 0, time.time() + 120
        while time.time() < deadline and status != 200 and proc.poll() is None:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code
            except httpx.HTTPError:
                time.sleep(0.2)
        environ = dict(
            item.split("=", 1) for item in Path(f"/proc/{proc.pid}/environ").read_text().split("\0") if "=" in item
        )
        return environ.get("OMP_WAIT_POLICY", ""), status
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")
def test_the_server_waits_passively_unless_the_operator_says(tiny_ckpt: Path) -> None:
    """OpenMP threads that spin starve the event loop on busy cores (see `service.cli._passive_openmp`): the
    command restarts itself, same PID, with passive waiting; an operator's own value is kept."""
    assert _serve_environ(tiny_ckpt, None) == ("PASSIVE", 200)
    assert _serve_environ(tiny_ckpt, "ACTIVE") == ("ACTIVE", 200)


def test_log_level_also_quiets_the_services_own_access_lines() -> None:
    """An operator's `log_level=warning` used to reach uvicorn only: one access line per request was still
    written. It now holds for the `service` loggers as well; `debug` opens them up."""
    import logging

    from dynsparse.cli_logging import set_console_level
    from service.cli import _log_at

    service, before = logging.getLogger("service"), logging.getLogger("service").level
    access = logging.getLogger("service.access")
    try:
        _log_at("warning")
        assert not access.isEnabledFor(logging.INFO) and access.isEnabledFor(logging.WARNING)
        _log_at("debug")
        assert access.isEnabledFor(logging.DEBUG)
    finally:
        service.setLevel(before)  # setLevel, not an attribute: it also clears the loggers' level caches
        set_console_level(logging.INFO)
