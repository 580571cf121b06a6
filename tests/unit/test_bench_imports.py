"""The benchmarks are run by hand, never by the tests: a name they import from the project, or from
each other, that was renamed would only show when someone ran them. Every such import resolves."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(BENCH.glob("*.py"))


def _defined(script: Path) -> set[str]:
    """The names a bench script defines or imports at its top level."""
    names: set[str] = set()
    for node in ast.parse(script.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _imports(script: Path) -> list[tuple[str, str, int]]:
    """(module, name, line) of each `from M import N` anywhere in the script, M ours or a bench script."""
    found = []
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            ours = node.module.split(".")[0] in ("autoretrain", "ml") or (BENCH / f"{node.module}.py").exists()
            if ours:
                found.extend((node.module, alias.name, node.lineno) for alias in node.names)
    return found


def _submodule(module: str, name: str) -> bool:
    try:
        return importlib.util.find_spec(f"{module}.{name}") is not None
    except ImportError:  # `module` is not a package
        return False


def test_every_script_imports_something_of_ours() -> None:
    assert SCRIPTS, f"no benchmark scripts in {BENCH}"
    assert any(_imports(script) for script in SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_what_a_bench_script_imports_exists(script: Path) -> None:
    missing = []
    for module, name, line in _imports(script):
        if (BENCH / f"{module}.py").exists():
            ok = name in _defined(BENCH / f"{module}.py")
        else:
            try:
                imported = importlib.import_module(module)
            except ImportError:
                ok = False
            else:
                ok = hasattr(imported, name) or _submodule(module, name)
        if not ok:
            missing.append(f"{script.name}:{line}: from {module} import {name}")
    assert not missing, missing
