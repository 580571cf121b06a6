"""The `autoretrain` command.

autoretrain up [--without-eventgrid]   Azurite + the local Functions host + Event Grid, until Ctrl-C
autoretrain host                 only the local Functions host (like `func start`)
autoretrain drop FILE...         upload files to the incoming container
autoretrain status [--json]      one record per blob version, from the ledger
autoretrain status BLOB [--json] one file's timeline: each move, data, window, steps, model, gate
autoretrain reconcile [--grace S]      one reconcile pass now: what it found and what it did
autoretrain retrain BLOB|KEY [--etag E] run a blob version again: a new, numbered retrain
autoretrain replay                     redeliver dead-lettered events to the running host
autoretrain replay BLOB --times N --concurrency M   redeliver a blob's BlobCreated N times
autoretrain list data|jobs|steps|models [--json]   the local workspace's catalogue
autoretrain demo                 the whole loop on scikit-learn's wine data, in monthly drops
autoretrain publish [--dry-run]  register ml/pipeline.yml and its steps in Azure ML (unchanged: nothing)
autoretrain ui [--port N]        the MLflow UI on the local tracking store (runs, metrics, models), until Ctrl-C
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterable

from autoretrain.cli.demo import cmd_demo
from autoretrain.cli.jobs import cmd_reconcile, cmd_retrain
from autoretrain.cli.publish import cmd_publish
from autoretrain.cli.replay import cmd_replay
from autoretrain.cli.stack import cmd_drop, cmd_host, cmd_ui, cmd_up
from autoretrain.cli.status import cmd_list, cmd_status
from autoretrain.domain.errors import AutoretrainError
from autoretrain.logs import printable
from autoretrain.settings import Settings

__all__ = ["main"]

log = logging.getLogger("autoretrain.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoretrain", description="Retraining that happens by itself when new data lands."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run Azurite, the local Functions host and Event Grid until Ctrl-C")
    up.add_argument("--poll-interval", type=float, default=1.0, help="seconds between looks at incoming/")
    up.add_argument("--without-eventgrid", action="store_true",
                    help="no local Event Grid: new files are found only by reconcile (to show a lost event)")
    sub.add_parser("host", help="run only the local Functions host")
    drop = sub.add_parser("drop", help="upload files to the incoming container")
    drop.add_argument("files", nargs="+")
    drop.add_argument("--prefix", default="", help="a folder prefix for the blob names, e.g. customer-a/")
    status = sub.add_parser("status", help="one record per blob version; with BLOB, its timeline")
    status.add_argument("blob", nargs="?",
                        help="a blob name in the incoming container, a blob path or a work key: its story")
    status.add_argument("--json", action="store_true")
    listing = sub.add_parser("list", help="the local workspace's data versions, jobs or models")
    listing.add_argument("kind", choices=("data", "trainsets", "jobs", "steps", "models"))
    listing.add_argument("--json", action="store_true")
    rec = sub.add_parser("reconcile", help="one reconcile pass now: print what it found and did")
    rec.add_argument("--grace", type=float, default=None,
                     help="seconds a blob may wait for its event before reconcile ingests it "
                          "(default AUTORETRAIN_RECONCILE_GRACE_SECONDS, 600)")
    rec.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for jobs the pass submitted")
    again = sub.add_parser("retrain", help="run a failed (or done) blob version again, as a new numbered retrain")
    again.add_argument("target", help="a work key from `autoretrain status`, or a blob name in the incoming container")
    again.add_argument("--etag", help="which version of the blob (default: its newest in the ledger)")
    again.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the job (local mode)")
    replay = sub.add_parser("replay", help="redeliver dead-lettered events, or one blob's BlobCreated")
    replay.add_argument("blob", nargs="?", help="a blob in the incoming container: redeliver its BlobCreated")
    replay.add_argument("--times", type=int, default=1)
    replay.add_argument("--concurrency", type=int, default=1)
    replay.add_argument("--container", default="deadletter",
                        help="the container Event Grid dead-letters into (infra/ names it 'deadletter')")
    demo = sub.add_parser("demo", help="the whole loop on monthly drops of scikit-learn's wine data")
    demo.add_argument("--months", type=int, default=4)
    demo.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the loop")
    publish = sub.add_parser("publish", help="register ml/pipeline.yml and its step components in Azure ML")
    publish.add_argument("--dry-run", action="store_true",
                         help="only look up which versions are registered; register nothing")
    ui = sub.add_parser("ui", help="the MLflow UI on the local tracking store: each job's runs, metrics and models")
    ui.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    return parser


_COMMANDS = {
    "up": cmd_up, "host": cmd_host, "drop": cmd_drop, "status": cmd_status, "reconcile": cmd_reconcile,
    "replay": cmd_replay, "list": cmd_list, "demo": cmd_demo, "retrain": cmd_retrain, "publish": cmd_publish,
    "ui": cmd_ui,
}


def main(argv: Iterable[str] | None = None) -> int:
    args = _parser().parse_args(None if argv is None else list(argv))
    try:
        settings = Settings.from_env()
        return _COMMANDS[args.command](settings, args)
    except AutoretrainError as exc:
        print(f"autoretrain: {printable(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # The command's own `finally` blocks have run: its jobs are stopped and left to resume.
        print(f"autoretrain {args.command}: stopped (Ctrl-C); a job it started is left to resume, and the "
              "running stack (`autoretrain up`) or the next `autoretrain reconcile` takes it over.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`autoretrain status --json | head`): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
