"""Benchmark: how long from a file's drop to its registered model, on the embedded default.

Runs the local stack (Azurite, the local Functions host, the local Event Grid) in this process on a
fresh home, then
  1. drops files one at a time, each after the previous one is done: the latency of one file
     alone, split into ingest (drop -> submitted) and pipeline + completion (submitted -> done);
  2. drops a batch at once: the wall time until all are done, and each file's latency.
Per-step times come from the local workspace's job logs.

    .venv/bin/python bench/loop_latency.py [--sequential 3] [--batch 4] [--rows 10000] [--poll-interval 1]
                                           [--no-poke] [--data repeated|noisy] [--keep]

The stack's home (the drops, the workspace, the logs) is removed at the end unless --keep.
Numbers go to stdout; report them in the issue notes. Not run by the tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
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
from autoretrain.domain import LedgerState, WorkKey  # noqa: E402
from autoretrain.local.azurite import free_port  # noqa: E402
from autoretrain.local.eventgrid import poke  # noqa: E402
from autoretrain.local.stack import LocalStack  # noqa: E402
from autoretrain.settings import Settings  # noqa: E402


def _drops(folder: Path, count: int, seed: int) -> list[Path]:
    spec = importlib.util.spec_from_file_location("wine_sample", ROOT / "ml" / "sample" / "wine.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.write_monthly_drops(folder, months=count, seed=seed))


def _wait(ledger: TableLedger, keys: dict[WorkKey, float], timeout: float = 600) -> dict[WorkKey, dict[str, float]]:
    """Poll every 50 ms; per key: seconds to submitted and to done, from its drop."""
    seen: dict[WorkKey, dict[str, float]] = {k: {} for k in keys}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for key, dropped in keys.items():
            record = ledger.get(key)
            if record is None:
                continue
            now = time.monotonic() - dropped
            if record.state in (LedgerState.SUBMITTED, LedgerState.DONE) and "submitted" not in seen[key]:
                seen[key]["submitted"] = now
            if record.state.final and "done" not in seen[key]:
                seen[key]["done"] = now
                if record.state is not LedgerState.DONE:
                    raise SystemExit(f"{record.blob.path} ended {record.state.value}: {record.reason}")
        if all("done" in v for v in seen.values()):
            return seen
        time.sleep(0.05)
    raise SystemExit("timed out")


def _step_times(home: Path) -> dict[str, list[float]]:
    """Seconds per step, as the local workspace recorded them (one subprocess per step)."""
    steps: dict[str, list[float]] = {}
    for row in catalog_rows(home, "steps"):
        steps.setdefault(row["step"], []).append(float(row["seconds"]))
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequential", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--poll-interval", type=float, default=1.0,
                        help="the watcher's poll (the `autoretrain up` default: 1 s)")
    parser.add_argument("--no-poke", action="store_true",
                        help="upload as another tool would: the watcher finds it at its next poll, "
                        "not told by `autoretrain drop`'s poke")
    parser.add_argument("--rows", type=int, default=0,
                        help="drop files of this many wine-shaped rows (default: the monthly wine drops)")
    parser.add_argument("--data", choices=("repeated", "noisy"), default="repeated",
                        help="with --rows: bench/pipeline.py's data sets (noisy: every feature 5%% noise)")
    parser.add_argument("--keep", action="store_true", help="keep the stack's home (the dropped files, logs)")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="autoretrain-bench-"))
    try:
        _bench(args, home)
    finally:
        if args.keep:
            print(f"\nkept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)  # 1M-row drops leave hundreds of MB


def _bench(args: argparse.Namespace, home: Path) -> None:
    token = str(int(time.time()))
    os.environ.update(
        AUTORETRAIN_HOME=str(home),
        AUTORETRAIN_HOST_URL=f"http://127.0.0.1:{free_port()}",
        AUTORETRAIN_INCOMING_CONTAINER=f"bench{token}",
        AUTORETRAIN_QUARANTINE_CONTAINER=f"benchq{token}",
        AUTORETRAIN_DATASETS_CONTAINER=f"benchd{token}",
        AUTORETRAIN_LEDGER_TABLE=f"bench{token}",
    )
    settings = Settings.from_env()
    started = time.monotonic()
    with LocalStack(settings, poll_interval=args.poll_interval):
        print(f"stack up in {time.monotonic() - started:.2f} s (home {home})")
        blobs = AzureBlobStore(blob_service(settings))
        ledger = TableLedger.connect(table_service(settings), settings.ledger_table)

        single: list[dict[str, float]] = []
        if args.rows:
            from pipeline import write_noisy, write_rows

            (home / "seq").mkdir(parents=True, exist_ok=True)
            files = []
            for i in range(args.sequential):
                if args.data == "noisy":
                    write_noisy(home / "seq" / f"rows-{i}.csv", args.rows, seed=i)
                else:
                    write_rows(home / "seq" / f"rows-{i}.csv", args.rows)
                files.append(home / "seq" / f"rows-{i}.csv")
        else:
            files = _drops(home / "seq", args.sequential, seed=11)
        for path in files:
            ref = blobs.upload(settings.incoming_container, f"seq-{path.name}", path.read_bytes())
            dropped = time.monotonic()  # the drop returned, as `autoretrain drop` does after its upload
            if not args.no_poke:
                poke(settings.home, settings.incoming_container)  # as `autoretrain drop` does
            key = WorkKey.for_blob(ref)
            single.append(_wait(ledger, {key: dropped})[key])
        print("\none file at a time (seconds from drop):")
        for i, t in enumerate(single, 1):
            print(f"  file {i}: submitted {t['submitted']:.2f}  done {t['done']:.2f}")
        done = [t["done"] for t in single]
        print(f"  drop -> model: median {statistics.median(done):.2f} s, min {min(done):.2f}, max {max(done):.2f}")

        if args.batch:
            batch_start = time.monotonic()
            keys = {}
            for path in _drops(home / "batch", args.batch, seed=12):
                ref = blobs.upload(settings.incoming_container, f"batch-{path.name}", path.read_bytes())
                dropped = time.monotonic()
                if not args.no_poke:
                    poke(settings.home, settings.incoming_container)
                keys[WorkKey.for_blob(ref)] = dropped
            result = _wait(ledger, keys)
            print(f"\n{args.batch} files at once: all done in {time.monotonic() - batch_start:.2f} s; per file "
                  + ", ".join(f"{t['done']:.1f}" for t in result.values()))

    print("\nstep durations (s), all jobs:")
    for step, values in sorted(_step_times(home).items()):
        print(f"  {step:<9} median {statistics.median(values):.2f}  max {max(values):.2f}  (n={len(values)})")


if __name__ == "__main__":
    main()
