"""`up`, `host`, `drop`, `ui`: the local stack, its Functions host, an upload, the MLflow UI."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from urllib.parse import urlsplit

from autoretrain.bootstrap import operator
from autoretrain.cli.common import azurite_for, stop_signals, wait_for_ctrl_c
from autoretrain.contract import load_contract
from autoretrain.domain import WorkKey
from autoretrain.domain.errors import AutoretrainError
from autoretrain.settings import Settings

__all__ = ["cmd_drop", "cmd_host", "cmd_ui", "cmd_up"]


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    stop = stop_signals()
    from autoretrain.local.host import configure_logging
    from autoretrain.local.stack import LocalStack

    configure_logging()
    load_contract(settings.contract)  # a bad contract stops here, in one line, before Azurite or the host start
    with LocalStack(settings, poll_interval=args.poll_interval, eventgrid=not args.without_eventgrid) as stack:
        events = "" if not args.without_eventgrid else (
            " Event Grid is off: a new file is found only by reconcile (the timer, or `autoretrain reconcile`)."
        )
        print(f"autoretrain is up: drop files into '{settings.incoming_container}' "
              f"(autoretrain drop FILE), host {stack.host.url}. Ctrl-C to stop.{events}", flush=True)
        wait_for_ctrl_c(stop)
    return 0


def cmd_host(settings: Settings, args: argparse.Namespace) -> int:
    stop = stop_signals()
    from autoretrain.bootstrap import PROJECT_ROOT
    from autoretrain.local.host import LocalHost, configure_logging

    configure_logging()
    # The timer's schedule is an app setting (%AUTORETRAIN_RECONCILE_SCHEDULE%), as on Azure.
    os.environ.setdefault("AUTORETRAIN_RECONCILE_SCHEDULE", settings.reconcile_schedule)
    port = urlsplit(settings.host_url).port or 7071
    host = LocalHost("function_app", app_root=PROJECT_ROOT, port=port, processes=settings.worker_processes)
    with host:
        print(f"Functions host listening on {host.url}. Ctrl-C to stop.", flush=True)
        wait_for_ctrl_c(stop)
    return 0


def cmd_drop(settings: Settings, args: argparse.Namespace) -> int:
    files = [Path(f) for f in args.files]
    for path in files:
        if not path.is_file():
            raise AutoretrainError(f"{path}: no such file; give the path of a CSV file to upload.")
    with azurite_for(settings):
        blobs = operator(settings).blobs
        for path in files:
            name = f"{args.prefix}{path.name}"
            ref = blobs.upload(settings.incoming_container, name, path.read_bytes())
            print(f"dropped {ref.path} etag={ref.etag} work_key={WorkKey.for_blob(ref)}")
    # A running stack on this home looks at incoming/ now, instead of at its next poll.
    from autoretrain.local.eventgrid import poke

    poke(settings.home, settings.incoming_container)
    return 0


def cmd_ui(settings: Settings, args: argparse.Namespace) -> int:
    from autoretrain.local.mlflow_ui import run_ui

    return run_ui(settings.home, experiment=settings.experiment, host=args.host, port=args.port)
