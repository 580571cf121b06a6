"""The tree's layers: which part of autoretrain may import which. No arrow runs back up, and
nothing the Functions app runs on Azure imports the laptop tools (`autoretrain.local`)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "autoretrain"

# Each part of the package, and the parts it may import (besides itself). Read bottom to top: a part
# imports only parts below it.
_BASE = {"domain", "datacontract", "waiting", "loading", "logs", "schedule", "settings", "contract"}
ALLOWED: dict[str, set[str]] = {
    "cli": _BASE | {"telemetry", "loop", "adapters", "bootstrap", "local"},
    "local": _BASE | {"telemetry", "loop", "adapters", "bootstrap"},
    "bootstrap": _BASE | {"telemetry", "loop", "adapters"},
    "adapters": _BASE,
    "loop": _BASE,
    "telemetry": {"logs", "domain"},
    "contract": {"datacontract", "domain"},
    "settings": {"schedule", "domain"},
    "schedule": {"domain"},
    "logs": {"domain"},
    "waiting": set(),
    "loading": set(),
    "datacontract": set(),
    "domain": set(),
}


def _imports(path: Path) -> set[str]:
    """The autoretrain modules a file imports (at any depth: lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "autoretrain":
            if node.module == "autoretrain":
                found |= {f"autoretrain.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "autoretrain"}
    return found


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else "autoretrain"


def test_every_part_of_the_package_imports_only_the_layers_below_it() -> None:
    """A part that is new (not in ALLOWED) fails too, so the map stays complete."""
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        part = relative.parts[0].removesuffix(".py")
        if part == "__init__":
            continue
        assert part in ALLOWED, f"autoretrain/{relative}: part {part!r} is not in the layer map"
        for module in _imports(path):
            target = _part(module)
            if target != part and target not in ALLOWED[part]:
                wrong.append(f"autoretrain/{relative} imports {module}")
    assert wrong == []


def test_nothing_the_functions_app_runs_imports_the_laptop_tools() -> None:
    """function_app.py, functions/ and every layer the app loads on Azure stay clear of autoretrain.local."""
    app_files = [ROOT / "function_app.py", *sorted((ROOT / "functions").glob("*.py"))]
    azure_parts = {part for part, allowed in ALLOWED.items() if part not in ("cli", "local")}
    for part in azure_parts:
        app_files += sorted(PACKAGE.glob(f"{part}.py")) + sorted((PACKAGE / part).rglob("*.py"))
    offenders = [f"{path.relative_to(ROOT)}: {module}" for path in app_files for module in _imports(path)
                 if _part(module) == "local"]
    assert offenders == []
