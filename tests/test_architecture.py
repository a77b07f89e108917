"""The tree is the plan: packages by role, imports pointing down only, no import loop.

Floors, top to bottom (gradbench/__init__.py draws the same map):

    cli.py                         the entry point
    commands/                      one module per command (train, check, bench, eval, report, ...)
    present/                       figures, tables and names, drawn from run-dir files
    run/                           the run machinery: build, loop, checkpoint, run dir, sweep
    estimators/ models/ data/ optim.py    what a run is made of
    errors.py columns.py paths.py  ground floor: facts every floor shares

A module may import its own floor (without a loop) and the floors below. The graph is read from
the source (every `import`, lazy ones inside functions too), so a loop hidden in a function
counts: lazy imports keep `--help` fast, they do not make a loop acceptable.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gradbench"
FLOORS = {
    "cli": 6,
    "commands": 5,
    "present": 4,
    "run": 3,
    "estimators": 2, "models": 2, "data": 2, "optim": 2,
    "errors": 1, "columns": 1, "paths": 1,
    "__init__": 1, "conf": 0,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if "conf" not in p.relative_to(PACKAGE).parts}


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The gradbench modules `path` imports, at any depth (function-level imports included)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from pkg import module` imports the module; `from module import name`, the module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, name, set(mods)) for name, path in mods.items()}


def floor(name: str) -> int:
    parts = name.split(".")
    return FLOORS[parts[1] if len(parts) > 1 else "__init__"]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_floor():
    unplaced = [m for m in modules() if m != "gradbench" and m.split(".")[1] not in FLOORS]
    assert not unplaced, f"modules on no floor (add their package to FLOORS and the map): {unplaced}"


def test_no_import_loop_inside_gradbench():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_loop():
    """The check above can fail: a planted three-module loop is found, a chain is not."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_imports_point_down_only():
    upward = [f"{m} (floor {floor(m)}) imports {t} (floor {floor(t)})"
              for m, targets in graph().items() for t in targets
              if m != "gradbench" and t != "gradbench" and floor(t) > floor(m)]
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("package", ["commands", "present", "run", "estimators", "models", "data"])
def test_every_package_opens_with_a_map_of_its_modules(package):
    """Each package's docstring names every module in it (one line each), like estimators/."""
    init = PACKAGE / package / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    missing = [p.name for p in (PACKAGE / package).glob("*.py") if p.name != "__init__.py" and p.name not in doc]
    assert not missing, f"gradbench/{package}/__init__.py's map leaves out {missing}"


def test_reading_and_drawing_runs_never_imports_torch():
    """`gradbench report` reads CSVs and draws: torch (half a GiB resident with its CUDA build)
    would be most of its memory. A module on the report's path that reaches for gradbench.models
    (for a constant) fails this."""
    import subprocess
    import sys

    code = "import sys, gradbench.commands.report, gradbench.present.report_plots; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
