"""Lint and types are part of the test command, so CI and the README's one command check them too."""

import ast
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


# -- the house: import graph and sizes (dynsparse/ and service/) ------------------------------------------
PACKAGES = ("dynsparse", "service")
# `dynsparse serve` is the core's one edge into the service: imported inside the command's handler, only when
# the command runs (the service depends on the core, never the other way at import time).
UP_EDGES = {("dynsparse.cli", "service.cli")}
MAX_MODULE, MAX_CLASS, MAX_FUNCTION = 400, 200, 60  # lines, after `ruff format`
# Over a limit, with the size they may not grow past (docs/architecture.md lists them): none today.
KNOWN_LARGE: dict[str, int] = {}


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return found


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (no import at run time)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def _imports(name: str, file: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports anywhere in its file (inside functions too). `from pkg import mod`
    counts as importing `pkg.mod` only: the package's own __init__ is not a dependency of its submodules."""
    tree = ast.parse(file.read_text())
    skip, out = _type_checking_only(tree), set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            targets = subs if all(s in known for s in subs) else [*subs, node.module]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, f, known) for name, f in known.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert sum(map(len, graph.values())) > 200, "the walk found too few imports to be looking at the code"
    assert _cycles(graph) == []


def test_a_cycle_is_found() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_core_does_not_import_the_service() -> None:
    graph = import_graph()
    up = {
        (m, t) for m, targets in graph.items() if m.startswith("dynsparse") for t in targets if t.startswith("service")
    }
    assert up == UP_EDGES


def _lines(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1  # type: ignore[attr-defined,operator]


def oversized() -> dict[str, int]:
    """Every module, class and function over its limit, with its length in lines."""
    out = {}
    for name, f in _modules().items():
        text = f.read_text()
        if len(text.splitlines()) > MAX_MODULE:
            out[name] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            limit = MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and _lines(node) > limit:
                out[f"{name}:{node.name}"] = _lines(node)
    return out


def test_sizes_stay_within_the_limits() -> None:
    over = oversized()
    grown = {k: v for k, v in over.items() if v > KNOWN_LARGE.get(k, 0)}
    assert grown == {}, f"over {MAX_MODULE}/{MAX_CLASS}/{MAX_FUNCTION} lines (module/class/function): {grown}"
    assert len(over) <= len(KNOWN_LARGE)


def test_the_service_imports_no_data_loading_or_plotting() -> None:
    code = "import sys, service.app; print(sorted(m for m in ('datasets', 'matplotlib', 'pandas', "
    code += "'dynsparse.evaluate', 'dynsparse.recipe') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr[-2000:]
