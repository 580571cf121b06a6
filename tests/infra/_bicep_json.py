"""Parse Bicep files with pycep-parser and print the result as JSON.

Run by tests/infra/infra_trees.py with the interpreter of .venv-iac (pycep-parser lives there, apart
from the app's dependencies). Arguments: Bicep file paths. Output: one JSON object mapping each path
to {"ok": true, "tree": ...} or {"ok": false, "error": "..."}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pycep import BicepParser


def main(paths: list[str]) -> None:
    parser = BicepParser()
    results: dict[str, object] = {}
    for path in paths:
        try:
            tree = parser.parse(file_path=Path(path))
        except Exception as exc:  # any parse failure is reported, never hidden
            results[path] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        else:
            results[path] = {"ok": True, "tree": tree}
    json.dump(results, sys.stdout, default=str)


if __name__ == "__main__":
    main(sys.argv[1:])
