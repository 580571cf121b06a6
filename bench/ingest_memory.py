"""Benchmark: peak memory of one ingest, a 1 KB blob against a 2 GiB one.

Ingest reads only the head of a file for the contract check (256 KiB), and its copies (the
snapshot in the datasets container, the data version's local file, a quarantine copy) stream, so
its peak memory should not depend on the file's size.

Starts Azurite on ports of its own with a fresh folder (autoretrain.local.azurite), writes the
big CSV by streaming (rows valid under ml/contract.yaml, never held in memory), uploads it with a
streaming upload and deletes the local file. Then, per case, a fresh driver process (this script,
`--driver`) builds the project's real dependencies with autoretrain.bootstrap (the Blob store, the
Table ledger on Azurite, the local workspace) and calls autoretrain.loop.ingest once on the
blob's BlobCreated event, built as the local Event Grid builds it; it reports its own peak RSS
(getrusage(RUSAGE_SELF).ru_maxrss), its RSS just before the ingest, the time the ingest took and
its phases from the loop's log lines. Each case has its own ledger table, datasets and quarantine
containers and workspace folder.

Cases:
  small      a ~1 KB file, accepted
  big        the big file, accepted: the contract is ml/contract.yaml with max_bytes raised above
             the file (the default limit is 512 MiB): head check, streamed copy to datasets,
             data version (streamed download to the workspace), training set, job
  big-quarantine  (unless --no-quarantine) the big file under ml/contract.yaml as it is: over
             max_bytes, so it is quarantined unread, with a streamed copy to the quarantine container

The local workspace in the driver keeps the submitted job queued (the job is not run: training on
2 GiB is bench/pipeline.py's subject, not ingest's); it also loads the pipeline before the ingest,
as the host does at start, so both cases measure the same process.

Needs about 4x the file size free on the temp folder's disk (Azurite's copy of the file, the
datasets copy, the quarantine copy, the data version's local file); with less, the file is made
smaller to fit, and the output says so.

    .venv/bin/python bench/ingest_memory.py [--size-mb 2048] [--no-quarantine] [--keep]

Numbers go to stdout; latest ones in bench/README.md. Not run by the tests.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIB = 1024 * 1024


def _rss_now() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


# ---- the driver: one ingest in a fresh process ---------------------------------------------------


def driver(blob_name: str) -> int:
    from ingest_throughput import held_deps

    from autoretrain import bootstrap as boot
    from autoretrain import loop
    from autoretrain.domain.events import parse_blob_created
    from autoretrain.local.eventgrid import blob_created_event
    from autoretrain.settings import Settings

    phases: list[tuple[float, str]] = []

    class Phases(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            event = getattr(record, "event", None)
            if event:
                phases.append((time.perf_counter(), str(event)))

    logging.getLogger("autoretrain").addHandler(Phases())
    logging.getLogger("autoretrain").setLevel(logging.INFO)

    settings = Settings.from_env()
    deps = held_deps()  # its pipeline loaded, as the host does at start: before the measurement
    workspace = deps.workspace
    listed = next(b for b in deps.blobs.list_blobs(settings.incoming_container) if b.ref.name == blob_name)
    client = boot.blob_service(settings).get_blob_client(settings.incoming_container, blob_name)
    event = blob_created_event(
        topic=settings.storage_topic, container=settings.incoming_container, name=blob_name,
        etag=listed.ref.etag, size=listed.size, content_type=listed.content_type,
        last_modified=listed.last_modified, url=client.url,
    )
    parsed = parse_blob_created(event)

    # RSS every 20 ms during the ingest: when the peak happened, not only how high.
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            samples.append((time.perf_counter(), _rss_now()))

    before_rss, before_peak = _rss_now(), _peak()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.perf_counter()
    outcome = loop.ingest(parsed, deps)
    seconds = time.perf_counter() - began
    stop.set()
    sampler.join()
    peak = _peak()
    record = deps.ledger.get(outcome.record.key) if hasattr(outcome, "record") else None
    workspace.close()
    marks = [(t - began, e) for t, e in phases if t >= began]
    steps = {}
    last = 0.0
    for t, e in marks:
        steps[e] = round(t - last, 3)
        last = t
    top = max(samples, key=lambda s: s[1]) if samples else (began, before_rss)
    print(json.dumps({
        "blob": blob_name, "bytes": listed.size, "outcome": type(outcome).__name__,
        "state": record.state.value if record else None, "reason": getattr(outcome, "reason", None),
        "seconds": seconds, "peak_rss": peak, "peak_before_ingest": before_peak, "rss_before_ingest": before_rss,
        "sampled_peak_rss": top[1], "sampled_peak_at_s": top[0] - began, "phases_s": steps,
    }))
    return 0


# ---- the parent ----------------------------------------------------------------------------------


def _sample_rows() -> tuple[list[str], list[list[str]]]:
    with (ROOT / "ml" / "sample" / "sample.csv").open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        return header, list(reader)


def _rows_text(rows: list[list[str]], rng: random.Random, count: int) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for _ in range(count):
        row = list(rng.choice(rows))
        row[0] = f"{float(row[0]) + rng.uniform(-0.05, 0.05):.3f}"
        writer.writerow(row)
    return out.getvalue()


def write_small(path: Path) -> int:
    header, rows = _sample_rows()
    rng = random.Random(1)
    # Every class at least twice (the head check refuses a file with one class or under 10 rows).
    chosen = [r for cls in ("class_0", "class_1", "class_2") for r in [x for x in rows if x[-1] == cls][:2]]
    chosen += rng.sample(rows, 6)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(chosen)
    path.write_text(out.getvalue())
    return path.stat().st_size


def write_big(path: Path, size: int) -> int:
    """About `size` bytes of valid rows, written block by block: 32 different ~1 MiB blocks in turn."""
    header, rows = _sample_rows()
    rng = random.Random(2)
    blocks = []
    for _ in range(32):
        text = _rows_text(rows, rng, 1)
        per_row = len(text)
        blocks.append((text + _rows_text(rows, rng, MIB // per_row)).encode())
    written = 0
    with path.open("wb", buffering=MIB) as out:
        line = (",".join(header) + "\n").encode()
        out.write(line)
        written += len(line)
        i = 0
        while written < size:
            block = blocks[i % len(blocks)]
            out.write(block)
            written += len(block)
            i += 1
    return written


def upload_streaming(connection: str, container: str, name: str, path: Path) -> None:
    from azure.storage.blob import BlobServiceClient

    from autoretrain.adapters.storage import client_options

    service = BlobServiceClient.from_connection_string(connection, **client_options())
    container_client = service.get_container_client(container)
    if not container_client.exists():
        container_client.create_container()
    with path.open("rb") as data:  # read block by block (4 MiB) by the SDK
        container_client.get_blob_client(name).upload_blob(data, length=path.stat().st_size, overwrite=True,
                                                           max_concurrency=2)


def run_driver(env: dict[str, str], blob: str, timeout: float) -> dict[str, Any]:
    process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--driver", blob], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except BaseException:
        process.kill()
        process.wait()
        raise
    if process.returncode != 0:
        raise SystemExit(f"driver for {blob} failed ({process.returncode}):\n{err[-3000:]}")
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=2048, help="the big file, in MiB (default 2048)")
    parser.add_argument("--no-quarantine", dest="quarantine", action="store_false",
                        help="skip the big file under the default contract (quarantined unread)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per driver (default 1800)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (Azurite's data included)")
    parser.add_argument("--driver", metavar="BLOB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        return driver(args.driver)

    from ingest_throughput import _connection_string, _free_port, interrupt_on_signals

    interrupt_on_signals()

    from autoretrain.local.azurite import Azurite

    workdir = Path(tempfile.mkdtemp(prefix="autoretrain-memory-bench-"))
    free = shutil.disk_usage(workdir).free
    copies = 5 if args.quarantine else 4  # the local file (until uploaded), Azurite's, datasets, local, quarantine
    size = args.size_mb * MIB
    note = ""
    if copies * size + 2 * 1024 * MIB > free:
        size = max((free - 2 * 1024 * MIB) // copies // MIB, 1) * MIB
        note = (f" (asked for {args.size_mb} MiB; {free / 2**30:.1f} GiB free on {workdir.parent} fits "
                f"{size // MIB} MiB x {copies} copies)")
    print(f"disk: {free / 2**30:.1f} GiB free on {workdir.parent}; big file {size / 2**30:.2f} GiB{note}")

    blob_port = _free_port()
    table_port = _free_port({blob_port, blob_port + 1})
    connection = _connection_string(blob_port, table_port)
    azurite = Azurite(workdir / "azurite-home", blob_port=blob_port, table_port=table_port)
    results = []
    try:
        azurite.start()
        incoming = "membenchin"
        small = workdir / "small.csv"
        small_bytes = write_small(small)
        upload_streaming(connection, incoming, "small.csv", small)
        big = workdir / "big.csv"
        began = time.perf_counter()
        big_bytes = write_big(big, size)
        wrote = time.perf_counter() - began
        began = time.perf_counter()
        upload_streaming(connection, incoming, "big.csv", big)
        uploaded = time.perf_counter() - began
        big.unlink()
        print(f"wrote big.csv ({big_bytes / 2**30:.2f} GiB) in {wrote:.1f} s, uploaded in {uploaded:.1f} s; "
              f"small.csv {small_bytes} B")

        raised = workdir / "contract-big.yaml"
        raised.write_text((ROOT / "ml" / "contract.yaml").read_text() + f"max_bytes: {big_bytes * 2}\n")
        cases = [("small", "small.csv", raised), ("big", "big.csv", raised)]
        if args.quarantine:
            cases.append(("big-quarantine", "big.csv", ROOT / "ml" / "contract.yaml"))
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORETRAIN_")}
        for n, (case, blob, contract) in enumerate(cases):
            home = workdir / f"home-{case}"
            env = {**base_env, "PYTHONPATH": str(ROOT), "AUTORETRAIN_HOME": str(home),
                   "AUTORETRAIN_STORAGE": connection, "AUTORETRAIN_CONTRACT": str(contract),
                   "AUTORETRAIN_INCOMING_CONTAINER": incoming,
                   "AUTORETRAIN_DATASETS_CONTAINER": f"membenchds{n}",
                   "AUTORETRAIN_QUARANTINE_CONTAINER": f"membenchq{n}",
                   "AUTORETRAIN_LEDGER_TABLE": f"membenchledger{n}",
                   "AUTORETRAIN_RECONCILE_SCHEDULE": "0 0 0 1 1 *"}
            result = run_driver(env, blob, args.timeout)
            result["case"] = case
            results.append(result)
            shutil.rmtree(home, ignore_errors=True)  # the data version's local copy
            print(f"  {case:<15} {result['bytes']:>13,} B  {result['outcome']:<11} peak RSS "
                  f"{result['peak_rss'] / MIB:7.1f} MiB (before ingest {result['rss_before_ingest'] / MIB:.1f}, "
                  f"sampled peak {result['sampled_peak_rss'] / MIB:.1f} at {result['sampled_peak_at_s']:.1f} s)  "
                  f"ingest {result['seconds']:.2f} s", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping Azurite", file=sys.stderr)
        return 130
    finally:
        azurite.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    base = results[0]
    print("\npeak RSS against the 1 KB ingest (target <= 1.2x):")
    for r in results[1:]:
        ratio = r["peak_rss"] / base["peak_rss"]
        extra = (r["sampled_peak_rss"] - r["rss_before_ingest"]) / MIB
        print(f"  {r['case']:<15} {ratio:.2f}x ({'met' if ratio <= 1.2 else 'MISSED'}); +{extra:.1f} MiB over the "
              f"RSS before its ingest (small: +{(base['sampled_peak_rss'] - base['rss_before_ingest']) / MIB:.1f}); "
              f"ingest {r['seconds']:.1f} s = {r['bytes'] / MIB / r['seconds']:.0f} MiB/s; state {r['state']}")
        print(f"  {'':<15} phases (s): " + ", ".join(f"{k} {v}" for k, v in r["phases_s"].items()))
    if args.json:
        args.json.write_text(json.dumps({"size_note": note, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
