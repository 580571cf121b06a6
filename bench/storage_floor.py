"""Benchmark: the CPU floor of one ingest's storage calls, with no app code at all.

A new blob cannot be ingested with fewer than five storage calls: claim the ledger row (Table
insert), read the head pinned to the eTag (Get Blob, range), write the snapshot (Put Blob,
If-None-Match: *), read the accepted versions for the training window (Table query), record the
submission (Table update, If-Match). A duplicate delivery makes two: the insert (409) and a read of
the row. This script makes exactly those calls, one after the other, through the SDK clients the app
builds (`autoretrain.bootstrap.blob_service` / `table_service`), on an Azurite of its own, and
measures the CPU they cost: this process's (the Python SDKs) and Azurite's (read from /proc).

From the two floors and the throughput benchmark's mix (--dup-share) it prints the most posts/s
that two cores could give if the host did nothing but these calls, and the most that Azurite, one
Node.js process (one core for its JavaScript), could serve.

    .venv/bin/python bench/storage_floor.py [--calls 400] [--dup-share 0.3] [--cores 2]

Numbers go to stdout; latest ones in bench/README.md. Not run by the tests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from azure.core import MatchConditions  # noqa: E402
from azure.core.exceptions import ResourceExistsError  # noqa: E402

from autoretrain import bootstrap as boot  # noqa: E402
from autoretrain.contract import HEAD_BYTES  # noqa: E402
from autoretrain.local.azurite import Azurite, azurite_connection, free_port  # noqa: E402
from autoretrain.settings import Settings  # noqa: E402

ROW = b"14.02,1.68,2.21,16.0,96,2.65,2.33,0.26,1.98,4.7,1.04,3.59,1035,class_0\n"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(calls: int, one: Callable[[int], None], azurite_pid: int) -> tuple[float, float, float]:
    """(wall, this process's CPU, Azurite's CPU) in ms per call of `one`, after 20 warm-up calls."""
    for i in range(20):
        one(calls + i)
    wall, cpu, node = time.perf_counter(), time.process_time(), _cpu_seconds(azurite_pid)
    for i in range(calls):
        one(i)
    return tuple(1000 * d / calls for d in (  # type: ignore[return-value]
        time.perf_counter() - wall, time.process_time() - cpu, _cpu_seconds(azurite_pid) - node))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400, help="ingests measured per case (default 400)")
    parser.add_argument("--dup-share", type=float, default=0.3, help="share of duplicate posts (default 0.3)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; medians are printed (default 3)")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="autoretrain-floor-"))
    blob_port, table_port = free_port(), free_port()
    azurite = Azurite(home, blob_port=blob_port, table_port=table_port).start()
    assert azurite._process is not None, "a fresh Azurite of this script's own"
    try:
        connection = azurite_connection(blob_port, table_port)
        settings = Settings(storage_connection=connection)
        blobs, tables = boot.blob_service(settings), boot.table_service(settings)
        blobs.create_container("incoming")
        blobs.create_container("datasets")
        table = tables.create_table("ledger")
        body = b"alcohol,malic_acid,ash,alcalinity_of_ash,magnesium,total_phenols,flavanoids," \
               b"nonflavanoid_phenols,proanthocyanins,color_intensity,hue,od280_od315_of_diluted_wines,proline," \
               b"cultivar\n" + ROW * 15
        total = (args.calls + 20) * args.repeat
        etags = [blobs.get_blob_client("incoming", f"{i}.csv").upload_blob(body)["etag"] for i in range(total)]
        offset = 0  # the first blob of the current run

        def new_blob(i: int) -> None:
            n = offset + i
            name, etag = f"{n}.csv", etags[n]
            claimed = table.create_entity({"PartitionKey": f"p{n}", "RowKey": "r", "state": "claimed",
                                           "blob": f"incoming/{name}", "etag": etag})
            head = blobs.get_blob_client("incoming", name).download_blob(
                0, HEAD_BYTES, etag=etag, match_condition=MatchConditions.IfNotModified).readall()
            blobs.get_blob_client("datasets", f"k{n}/{name}").upload_blob(
                head, overwrite=False, metadata={"source_etag": etag})
            list(table.query_entities("state eq @state", parameters={"state": "done"}))
            table.update_entity({"PartitionKey": f"p{n}", "RowKey": "r", "state": "submitted"},
                                etag=claimed["etag"], match_condition=MatchConditions.IfNotModified)

        def duplicate(i: int) -> None:
            n = offset + i
            try:
                table.create_entity({"PartitionKey": f"p{n}", "RowKey": "r", "state": "claimed"})
            except ResourceExistsError:
                table.get_entity(f"p{n}", "r")
            else:
                raise AssertionError("the duplicate's row was not there")

        results: dict[str, list[tuple[float, float, float]]] = {"new": [], "duplicate": []}
        for _ in range(args.repeat):
            results["new"].append(_measure(args.calls, new_blob, azurite._process.pid))
            results["duplicate"].append(_measure(args.calls, duplicate, azurite._process.pid))
            offset += args.calls + 20
        medians = {case: tuple(statistics.median(r[k] for r in rows) for k in range(3))
                   for case, rows in results.items()}
        for case, (wall, cpu, node) in medians.items():
            print(f"{case:>9}: wall {wall:.2f} ms, SDK client CPU {cpu:.2f} ms, Azurite CPU {node:.2f} ms "
                  f"(median of {args.repeat} x {args.calls})")
        share = args.dup_share
        per_post = [(1 - share) * medians["new"][k] + share * medians["duplicate"][k] for k in (1, 2)]
        both = sum(per_post)
        print(f"per post at {share:.0%} duplicates: {per_post[0]:.2f} ms client + {per_post[1]:.2f} ms Azurite "
              f"= {both:.2f} ms of CPU")
        print(f"ceiling with {args.cores} cores and no app code: {1000 * args.cores / both:.0f} posts/s; "
              f"Azurite alone (one core): {1000 / per_post[1]:.0f} posts/s")
    finally:
        azurite.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
