"""Import a module of ml/ by its path, as Azure ML runs it: with ml/src on sys.path.

ml/ is not a package (Azure ML uploads ml/src alone), so the tests that exercise its scripts and
the demo data module load them from their files, through this one helper.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ML = Path(__file__).resolve().parent.parent / "ml"
SRC = ML / "src"


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
