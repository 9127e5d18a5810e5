"""Lint and types are part of the test command, so CI and the README's one command check them too."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("tool,args", [("ruff", ["check", "."]), ("ruff", ["format", "--check", "."]), ("mypy", [])])
def test_tool_is_clean(tool: str, args: list[str]) -> None:
    if shutil.which(tool) is None and not (Path(sys.executable).parent / tool).exists():
        pytest.skip(f"{tool} not installed (pip install -e '.[dev]')")
    exe = shutil.which(tool) or str(Path(sys.executable).parent / tool)
    r = subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]
