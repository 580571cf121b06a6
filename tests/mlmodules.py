"""Import a module of ml/ by its path, as Azure ML runs it: with ml/src on sys.path.

ml/ is not a package (Azure ML uploads ml/src alone), so the tests that exercise its scripts and
the demo data module load them from their files, through this one helper.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from autoretrain import datacontract

ML = Path(__file__).resolve().parent.parent / "ml"
SRC = ML / "src"
# The steps import the shared contract rules as `datacontract` (an additional include in every
# component's snapshot); in this process that is the package's own module.
sys.modules.setdefault("datacontract", datacontract)


def load_ml_module(path: Path, name: str) -> ModuleType:
    """The module at `path`, registered as `name` (dataclasses look their module up while built)."""
    sys.path.insert(0, str(SRC))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SRC))
        # The scripts import ml/src/contract.py as `contract`; drop it so no other test sees it.
        sys.modules.pop("contract", None)
    return module


def wine() -> ModuleType:
    """ml/sample/wine.py: the demo data set and its monthly drops."""
    return load_ml_module(ML / "sample" / "wine.py", "ml_sample_wine")


def wine_csv(rows: slice, seed: int) -> bytes:
    """Rows of the wine sample, shuffled by `seed`, as CSV bytes with its header."""
    frame = wine().wine_frame().sample(frac=1.0, random_state=seed).iloc[rows]
    return str(frame.to_csv(index=False)).encode()


def snapshot(component_path: Path, component: dict[str, Any], target: Path) -> Path:
    """A component's code snapshot, as Azure ML builds it: `code`, plus each additional include."""
    base = component_path.parent
    if not target.exists():
        shutil.copytree(base / component["code"], target, ignore=shutil.ignore_patterns("__pycache__"))
        for include in component.get("additional_includes") or []:
            shutil.copy2((base / include).resolve(), target / Path(include).name)
    return target
