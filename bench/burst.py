"""Benchmark: a burst of files dropped at once, with a job per file and with one job in flight.

Runs the whole local stack (its own Azurite on ports of its own, the local Functions host, the local
Event Grid) on a fresh home per mode, drops N wine files at once, and waits until every one is final.
For each mode it prints the jobs that ran, the files and rows they trained on in all (each job trains
on its whole training set: the files accepted so far), and the wall time from the drop to the last
model.

    .venv/bin/python bench/burst.py [--files 30] [--modes 0,1]

`jobs_in_flight: 0` is a job per file at once (what every file did before the limit existed);
`1` is the default. Numbers go to stdout; report them in the issue notes. Not run by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autoretrain.adapters.ledger import TableLedger  # noqa: E402
from autoretrain.adapters.localworkspace.workspace import catalog_rows  # noqa: E402
from autoretrain.adapters.storage import AzureBlobStore  # noqa: E402
from autoretrain.bootstrap import blob_service, table_service  # noqa: E402
from autoretrain.domain import WorkKey, job_output_path  # noqa: E402
from autoretrain.local.azurite import azurite_connection, free_port  # noqa: E402
from autoretrain.local.stack import LocalStack  # noqa: E402
from autoretrain.settings import Settings  # noqa: E402


def _files(count: int) -> list[bytes]:
    """`count` distinct wine files of 120 rows each (a day's worth of a month's data)."""
    sys.path.insert(0, str(ROOT / "ml" / "sample"))
    import wine  # type: ignore[import-not-found]

    frame = wine.wine_frame()
    return [frame.sample(n=120, replace=True, random_state=n).to_csv(index=False).encode() for n in range(count)]


def run(files: list[bytes], jobs_in_flight: int) -> dict[str, float]:
    home = Path(tempfile.mkdtemp(prefix=f"autoretrain-burst-{jobs_in_flight}-"))
    try:
        return _run(files, jobs_in_flight, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _run(files: list[bytes], jobs_in_flight: int, home: Path) -> dict[str, float]:
    contract = home / "contract.yaml"
    contract.write_text((ROOT / "ml" / "contract.yaml").read_text(encoding="utf-8")
                        + f"training: {{jobs_in_flight: {jobs_in_flight}}}\n", encoding="utf-8")
    blob, table = free_port(), free_port()
    os.environ.update(
        AUTORETRAIN_HOME=str(home), AUTORETRAIN_CONTRACT=str(contract),
        AUTORETRAIN_HOST_URL=f"http://127.0.0.1:{free_port()}",
        AUTORETRAIN_STORAGE=azurite_connection(blob, table),
    )
    settings = Settings.from_env()
    with LocalStack(settings, poll_interval=0.2):
        blobs = AzureBlobStore(blob_service(settings))
        ledger = TableLedger.connect(table_service(settings), settings.ledger_table)
        started = time.monotonic()
        keys = [WorkKey.for_blob(blobs.upload(settings.incoming_container, f"day-{n:02d}.csv", data))
                for n, data in enumerate(files)]
        while True:
            records = [ledger.get(key) for key in keys]
            if all(r is not None and r.state.final for r in records):
                break
            if time.monotonic() - started > 1800:
                raise SystemExit("timed out")
            time.sleep(0.1)
        wall = time.monotonic() - started
    bad = [r for r in records if r is not None and r.state.value != "done"]
    if bad:
        raise SystemExit(f"not all done: {[(r.blob.name, r.state.value, r.reason) for r in bad]}")
    jobs = catalog_rows(home, "jobs")
    rows = files_trained = 0
    for job in jobs:
        report = json.loads((home / "workspace" / job_output_path(job["name"], "report") / "report.json").read_text())
        rows += int(report["train_rows"])
        files_trained += int(report["train_files"])
    return {"jobs": len(jobs), "files_trained": files_trained, "rows_trained": rows, "wall_s": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=30)
    parser.add_argument("--modes", default="0,1", help="jobs_in_flight values to run, comma-separated")
    args = parser.parse_args()
    files = _files(args.files)
    for mode in (int(m) for m in args.modes.split(",")):
        result = run(files, mode)
        print(f"jobs_in_flight {mode}: {args.files} files at once -> {result['jobs']} jobs, "
              f"{result['files_trained']} file trainings, {result['rows_trained']:,} training rows, "
              f"all done in {result['wall_s']} s", flush=True)


if __name__ == "__main__":
    main()
