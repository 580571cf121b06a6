"""Benchmark: what the function app's import costs a cold worker, with and without telemetry.

Each case is a fresh interpreter (as a cold Functions worker is) that times one import and exits at
once (`os._exit`: no exporter flush at exit, which would wait on a network that is not here):
  - `import azure.functions`: the floor every Python function app pays;
  - `import function_app` without APPLICATIONINSIGHTS_CONNECTION_STRING (local mode: OpenTelemetry
    is not even imported);
  - `import function_app` with a connection string (Azure: azure-monitor-opentelemetry is imported
    and configured, exporters and all). The key and endpoint are made up; nothing is sent.
Medians of --repeat runs, as a ratio to `import azure.functions`.

    .venv/bin/python bench/cold_start.py [--repeat 7]

Numbers go to stdout; latest ones in bench/README.md. Not run by the tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAKE_CONNECTION = (
    "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
    "IngestionEndpoint=https://ingest.invalid/;LiveEndpoint=https://live.invalid/"
)
_TIMED = (
    "import os, sys, time; sys.path.insert(0, {root!r}); t = time.perf_counter(); import {module}; "
    "print(time.perf_counter() - t, flush=True); os._exit(0)"
)


def _seconds(module: str, env: dict[str, str]) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _TIMED.format(root=str(ROOT), module=module)], cwd=ROOT, env=env,
        capture_output=True, text=True, check=True, timeout=120,
    )
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if k != "APPLICATIONINSIGHTS_CONNECTION_STRING"}
    cases = {
        "import azure.functions": ("azure.functions", base),
        "import function_app (local: no telemetry)": ("function_app", base),
        "import function_app (Application Insights)": (
            "function_app", {**base, "APPLICATIONINSIGHTS_CONNECTION_STRING": FAKE_CONNECTION}),
    }
    medians = {}
    for label, (module, env) in cases.items():
        _seconds(module, env)  # warm the file cache: every case then reads from memory
        medians[label] = statistics.median(_seconds(module, env) for _ in range(args.repeat))
    floor = medians["import azure.functions"]
    for label, seconds in medians.items():
        print(f"{label:<45} {seconds * 1000:7.0f} ms  {seconds / floor:5.1f}x")


if __name__ == "__main__":
    main()
