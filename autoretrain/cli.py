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
import contextlib
import importlib.util
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from autoretrain.domain import BlobRef, LedgerRecord, LedgerState, WorkKey
from autoretrain.errors import AutoretrainError, ConfigError
from autoretrain.local import host_answers
from autoretrain.ports import Ledger
from autoretrain.settings import Settings

__all__ = ["main"]

log = logging.getLogger("autoretrain.cli")
ROOT = Path(__file__).resolve().parent.parent
STATUS_COLUMNS = ("blob", "etag", "state", "retrain", "data_version", "job", "model_version", "metrics", "promoted",
                  "decision", "reason")


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str], out: TextIO, *, width: int = 60) -> None:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4f}"
        if isinstance(value, dict):
            return " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
        text = str(value)
        return text if len(text) <= width else text[: width - 1] + "…"

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    out.write("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    for r in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")


def _status_row(record: LedgerRecord) -> dict[str, Any]:
    row = record.as_row()
    if record.metrics:
        # The gate's two numbers, on the same test rows: this model's and the champion's.
        metrics: dict[str, Any] = {record.metrics.primary: record.metrics.primary_value}
        if record.metrics.champion_value is not None:
            metrics["champion"] = record.metrics.champion_value
        if record.metrics.test_rows is not None:
            metrics["rows"] = record.metrics.test_rows
        row["metrics"] = metrics
    return row


def _ledger(settings: Settings):  # type: ignore[no-untyped-def]
    from autoretrain.bootstrap import table_service
    from autoretrain.ledger import TableLedger

    return TableLedger.connect(table_service(settings), settings.ledger_table)


def _blobs(settings: Settings):  # type: ignore[no-untyped-def]
    from autoretrain.bootstrap import blob_service
    from autoretrain.storage import AzureBlobStore

    return AzureBlobStore(blob_service(settings))


def _azurite(settings: Settings):  # type: ignore[no-untyped-def]
    from autoretrain.local.azurite import Azurite, azurite_ports

    if settings.storage_connection is None:
        return contextlib.nullcontext()  # Azure storage: nothing to start
    blob_port, table_port = azurite_ports(settings.storage_connection)
    return Azurite(settings.home, blob_port=blob_port, table_port=table_port)


def _wait_for_ctrl_c() -> None:
    stop = threading.Event()
    # Set explicitly: a shell starts background jobs with SIGINT ignored. SIGHUP is the terminal
    # closing: the same clean stop, so Azurite's last save completes.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    log.info("Stopping: waiting for running functions and jobs to finish")


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from autoretrain.local.host import configure_logging
    from autoretrain.local.stack import LocalStack

    configure_logging()
    with LocalStack(settings, poll_interval=args.poll_interval, eventgrid=not args.without_eventgrid) as stack:
        events = "" if not args.without_eventgrid else (
            " Event Grid is off: a new file is found only by reconcile (the timer, or `autoretrain reconcile`)."
        )
        print(f"autoretrain is up: drop files into '{settings.incoming_container}' "
              f"(autoretrain drop FILE), host {stack.host.url}. Ctrl-C to stop.{events}", flush=True)
        _wait_for_ctrl_c()
    return 0


def cmd_host(settings: Settings, args: argparse.Namespace) -> int:
    from autoretrain.local.host import LocalHost, configure_logging
    from autoretrain.local.stack import APP_ROOT

    configure_logging()
    # The timer's schedule is an app setting (%AUTORETRAIN_RECONCILE_SCHEDULE%), as on Azure.
    os.environ.setdefault("AUTORETRAIN_RECONCILE_SCHEDULE", settings.reconcile_schedule)
    port = urlsplit(settings.host_url).port or 7071
    host = LocalHost("function_app", app_root=APP_ROOT, port=port, processes=settings.worker_processes)
    with host:
        print(f"Functions host listening on {host.url}. Ctrl-C to stop.", flush=True)
        _wait_for_ctrl_c()
    return 0


def cmd_drop(settings: Settings, args: argparse.Namespace) -> int:
    files = [Path(f) for f in args.files]
    for path in files:
        if not path.is_file():
            raise AutoretrainError(f"{path}: no such file; give the path of a CSV file to upload.")
    with _azurite(settings):
        blobs = _blobs(settings)
        for path in files:
            name = f"{args.prefix}{path.name}"
            ref = blobs.upload(settings.incoming_container, name, path.read_bytes())
            print(f"dropped {ref.path} etag={ref.etag} work_key={WorkKey.for_blob(ref)}")
    return 0


def _records_named(settings: Settings, records: Sequence[LedgerRecord], target: str) -> list[LedgerRecord]:
    """The records `target` names, with every retrain of them: a work key, a blob path, or a name
    in the incoming container (all its versions)."""
    name = target.removeprefix(f"{settings.incoming_container}/")
    incoming = settings.incoming_container
    origins = {
        r.origin for r in records
        if target in (r.key.value, r.blob.path) or (r.blob.container == incoming and r.blob.name == name)
    }
    return [r for r in records if r.origin in origins]


def _story(settings: Settings, record: LedgerRecord) -> dict[str, Any]:
    """One run of one blob version as data: the ledger's row and timeline, and (local mode) the
    job's steps from the embedded workspace's catalogue."""
    from autoretrain.settings import WorkspaceKind

    story = record.as_row()
    story["steps"] = []
    # Which files trained the model: read from the training set (the record keeps only counts).
    story["training_files"] = list(_training_files(settings, record.training_set)) if record.training_set else []
    if record.job and settings.workspace is WorkspaceKind.LOCAL:
        from autoretrain.workspace.local import catalog_rows

        logs = Path(settings.home).resolve() / "workspace" / "jobs" / record.job / "logs"
        story["steps"] = [
            {"step": s["step"], "status": s["status"], "seconds": s["seconds"], "exit_code": s["exit_code"],
             "log": str(logs / f"{s['step']}.log")}
            for s in catalog_rows(settings.home, "steps") if s["job"] == record.job
        ]
    return story


def _training_files(settings: Settings, training_set: str) -> tuple[str, ...]:
    """The data versions of a training set, oldest first (empty when it cannot be read)."""
    from autoretrain.settings import WorkspaceKind

    if settings.workspace is WorkspaceKind.LOCAL:
        from autoretrain.workspace.local import catalog_rows

        name, _, version = training_set.rpartition(":")
        rows = [r for r in catalog_rows(settings.home, "trainsets")
                if (r["name"], str(r["version"])) == (name, version)]
        return tuple(rows[0]["members"]) if rows else ()
    from autoretrain.bootstrap import bootstrap

    try:
        return bootstrap(settings, worker=False).workspace.training_set_members(training_set)
    except AutoretrainError as exc:
        print(f"training set {training_set}: {exc}", file=sys.stderr)
        return ()


def _print_story(story: dict[str, Any], out: TextIO) -> None:
    run = f"retrain {story['retrain']}" if story["retrain"] else "first run"
    out.write(f"{story['blob']}  eTag {story['etag']}  work key {story['key']}  ({run}): {story['state']}\n")
    for moved in story["history"]:
        at = moved["at"].replace("T", " ")[:23]
        out.write(f"  {at}  {moved['state']:<11} {moved['note']}\n")
    if story["data_version"]:
        files = story["training_files"]
        trained = files[-story["trained_on"]:] if story["trained_on"] else files
        window = ", ".join(trained) or story["data_version"]
        of = f"{story['trained_on']} of {story['members']}: " if story["members"] else ""
        out.write(f"  data      {story['data_version']}, trained in {story['training_set']} (window: {of}{window})\n")
    if story["job"]:
        steps = ", ".join(f"{s['step']} {s['status'].lower()} {s['seconds']} s" for s in story["steps"] if s["seconds"]
                          is not None)
        out.write(f"  job       {story['job']}" + (f": {steps}" if steps else "") + "\n")
        for step in story["steps"]:
            out.write(f"            {step['step']} log: {step['log']}\n")
    if story["model_version"]:
        metrics = story["metrics"] or {}
        primary = story["primary_metric"]
        value = metrics.get(primary)
        champion = (story["champion_metrics"] or {}).get(primary)
        numbers = f"{primary} {value:.4f}" if value is not None else ""
        if champion is not None:
            numbers += f" against the champion's {champion:.4f} on the same {story['test_rows']} test rows"
        out.write(f"  model     {story['model_version']}{', promoted' if story['promoted'] else ''}: {numbers}\n")
    if story["decision"]:
        out.write(f"  gate      {story['decision']}\n")
    if story["reason"]:
        out.write(f"  reason    {story['reason']}\n")


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    with _azurite(settings):
        records = sorted(_ledger(settings).records(), key=lambda r: r.created)
    if args.blob:
        runs = _records_named(settings, records, args.blob)
        if not runs:
            raise AutoretrainError(
                f"{args.blob}: no blob version or work key of that name in the ledger; `autoretrain status` lists them."
            )
        stories = [_story(settings, r) for r in runs]
        if args.json:
            json.dump(stories, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            for story in stories:
                _print_story(story, sys.stdout)
        return 0
    rows = [_status_row(r) for r in records]
    if args.json:
        json.dump([r.as_row() for r in records], sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif rows:
        _table(rows, STATUS_COLUMNS, sys.stdout)
    else:
        print("No blob versions in the ledger yet: drop a file with `autoretrain drop FILE`.")
    return 0


def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import timedelta

    from autoretrain.bootstrap import bootstrap
    from autoretrain.local.host import configure_logging
    from autoretrain.loop import reconcile

    configure_logging(sys.stderr, logging.WARNING)
    grace = timedelta(seconds=settings.reconcile_grace_seconds if args.grace is None else args.grace)
    with _azurite(settings):
        deps = bootstrap(settings, worker=False)
        report = reconcile(deps, grace=grace)
        passes = [report]
        drain = getattr(deps.workspace, "drain", None)
        if drain is not None and any(f.result.startswith("submitted") for f in report.found):
            # Jobs submitted by this pass run in this process (local mode): wait, then finish them.
            print(f"waiting up to {args.timeout:.0f} s for the jobs this pass submitted...", flush=True)
            drain(args.timeout)
            passes.append(reconcile(deps, grace=grace))
        close = getattr(deps.workspace, "close", None)
        if close is not None:
            close()
    for number, one in enumerate(passes, start=1):
        print(f"pass {number}: {one.blobs_listed} blob(s) in '{settings.incoming_container}', "
              f"{one.records} ledger record(s), {one.jobs} job(s); found {len(one.found)}, errors {len(one.errors)}")
        for item in one.found:
            print(f"  {item.what:<16} {item.blob}  work_key={item.work_key}\n  {'':<16} -> {item.result}")
        for error in one.errors:
            print(f"  error: {error}")
    return 1 if passes[-1].errors else 0


def _retrain_target(settings: Settings, ledger: Ledger, target: str, etag: str | None) -> BlobRef:
    """The blob version to retrain: a work key from `autoretrain status`, or a blob name in the
    incoming container (its newest version in the ledger, or the one `etag` names)."""
    with contextlib.suppress(ValueError):
        record = ledger.get(WorkKey(target))
        if record is not None:
            return record.blob
    name = target.removeprefix(f"{settings.incoming_container}/")
    if etag is not None:
        return BlobRef(settings.incoming_container, name, etag)
    versions = sorted(
        (r for r in ledger.records()
         if r.retrain_of is None and r.blob.container == settings.incoming_container and r.blob.name == name),
        key=lambda r: r.created,
    )
    if not versions:
        raise AutoretrainError(
            f"{settings.incoming_container}/{name}: no version of it is in the ledger; "
            "see `autoretrain status` for the blobs and work keys it knows."
        )
    if len(versions) > 1:
        print(f"{name} has {len(versions)} versions in the ledger; retraining the newest, eTag "
              f"{versions[-1].blob.etag} (--etag picks another).")
    return versions[-1].blob


def cmd_retrain(settings: Settings, args: argparse.Namespace) -> int:
    from autoretrain.bootstrap import bootstrap
    from autoretrain.local.host import configure_logging
    from autoretrain.loop import Submitted, complete_record, retrain

    configure_logging(sys.stderr, logging.WARNING)
    with _azurite(settings):
        deps = bootstrap(settings, worker=False)
        try:
            blob = _retrain_target(settings, deps.ledger, args.target, args.etag)
            outcome = retrain(blob, deps)
            record = getattr(outcome, "record", None)
            if not isinstance(outcome, Submitted) or record is None:
                print(f"{blob.path}: {type(outcome).__name__.lower()}: {getattr(record, 'state', '')} "
                      f"{getattr(outcome, 'reason', '') or getattr(record, 'reason', '') or ''}".rstrip())
                return 1
            print(f"retrain {record.retrain} of {blob.path} (eTag {blob.etag}): job {outcome.job.name} on "
                  f"{record.data_version}, work key {record.key}", flush=True)
            drain = getattr(deps.workspace, "drain", None)
            if drain is not None:
                # Local mode: the job runs in this process; wait for it, then finish it here.
                print(f"waiting up to {args.timeout:.0f} s for the job...", flush=True)
                drain(args.timeout)
                finished = complete_record(deps.ledger.get(record.key) or record, deps)
                record = getattr(finished, "record", record)
            print(f"{record.key}: {record.state.value}"
                  + (f", model {record.model_version}" if record.model_version else "")
                  + (f"; {record.decision}" if record.decision else "")
                  + (f"; {record.reason}" if record.reason else ""))
            return 0 if record.state in (LedgerState.DONE, LedgerState.SUBMITTED) else 1
        finally:
            close = getattr(deps.workspace, "close", None)
            if close is not None:
                close()


def _replay_targets(event: dict[str, Any]) -> str | None:
    kind = str(event.get("eventType") or event.get("type") or "")
    if kind == "Microsoft.Storage.BlobCreated":
        return "ingest"
    if kind.startswith("Microsoft.MachineLearningServices."):
        return "completion"
    return None


_DEADLETTER_KEYS = (
    "deadLetterReason", "deliveryAttempts", "lastDeliveryOutcome", "lastHttpStatusCode", "publishTime",
    "lastDeliveryAttemptTime",
)


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    if not host_answers(settings.host_url):
        raise AutoretrainError(
            f"no Functions host answers at {settings.host_url}; start `autoretrain up` (or `autoretrain host`) first."
        )
    if args.blob:
        return _replay_blob(settings, args)
    return _replay_deadletters(settings, args.container)


def _replay_blob(settings: Settings, args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from autoretrain.bootstrap import blob_service
    from autoretrain.local.eventgrid import blob_created_event, deliver_once, eventgrid_webhook_url

    if args.times < 1 or args.concurrency < 1:
        raise AutoretrainError("--times and --concurrency must be at least 1.")
    name = args.blob.removeprefix(f"{settings.incoming_container}/")
    client = blob_service(settings).get_blob_client(settings.incoming_container, name)
    try:
        props = client.get_blob_properties()
    except Exception as exc:
        raise AutoretrainError(f"{settings.incoming_container}/{name}: cannot read it ({type(exc).__name__}); "
                               "give a blob name from `autoretrain status`.") from None
    # One event, delivered N times: what Event Grid does when it retries (same id, same eTag).
    event = blob_created_event(
        topic=settings.storage_topic, container=settings.incoming_container, name=name,
        etag=str(props.etag).strip('"'), size=int(props.size), content_type=props.content_settings.content_type,
        last_modified=props.last_modified, url=client.url,
    )
    url = eventgrid_webhook_url(settings.host_url, "ingest")
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        statuses = list(pool.map(lambda _: deliver_once(url, event), range(args.times)))
    counts: dict[int, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    failed = sum(n for status, n in counts.items() if not 200 <= status <= 204)
    answers = ", ".join(f"HTTP {s or 'no answer'} x{n}" for s, n in sorted(counts.items()))
    print(f"delivered {event['subject']} (eTag {event['data']['eTag']}) {args.times} time(s), "
          f"{args.concurrency} at once: {answers}")
    key = WorkKey.for_blob(BlobRef(settings.incoming_container, name, event["data"]["eTag"]))
    with _azurite(settings):
        record = _ledger(settings).get(key)
    print(f"ledger: {record.state.value if record else 'no record'}"
          + (f", job {record.job}" if record and record.job else ""))
    return 1 if failed else 0


def _replay_deadletters(settings: Settings, container_name: str) -> int:
    results: list[bool] = []
    folder = settings.home / "deadletter"
    for path in sorted(folder.glob("*.json")):
        try:
            text = path.read_bytes()
        except OSError as exc:
            print(f"  {path.name}: unreadable ({exc}); left where it is")
            results.append(False)
            continue
        results.append(_replay_records(settings, text, path.name))
        if results[-1]:
            (folder / "replayed").mkdir(parents=True, exist_ok=True)
            path.replace(folder / "replayed" / path.name)
    with _azurite(settings):
        from autoretrain.bootstrap import blob_service

        container = blob_service(settings).get_container_client(container_name)
        if container.exists():
            for blob in container.list_blobs(include=["metadata"]):
                if (blob.metadata or {}).get("replayed_at"):
                    continue
                client = container.get_blob_client(blob.name)
                results.append(_replay_records(settings, client.download_blob().readall(),
                                               f"{container_name}/{blob.name}"))
                if results[-1]:
                    # Kept, marked: the dead-letter record stays the evidence of what happened.
                    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                    client.set_blob_metadata({**(blob.metadata or {}), "replayed_at": stamp})
    failed = results.count(False)
    print(f"replayed {len(results) - failed} dead-letter record(s), {failed} failed")
    return 1 if failed else 0


def _replay_records(settings: Settings, text: bytes, where: str) -> bool:
    """Redeliver the event(s) of one dead-letter file: a record, or Event Grid's array of them."""
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        print(f"  {where}: not JSON ({exc}); left where it is")
        return False
    records = parsed if isinstance(parsed, list) else [parsed]
    return all([_replay_one(settings, one, where) for one in records])


def _replay_one(settings: Settings, record: Any, where: str) -> bool:
    from autoretrain.local.eventgrid import deliver_once, eventgrid_webhook_url

    if not isinstance(record, dict):
        print(f"  {where}: not an event object; left where it is")
        return False
    event = {k: v for k, v in record.items() if k not in _DEADLETTER_KEYS}
    function = _replay_targets(event)
    if function is None:
        kind = event.get("eventType") or event.get("type")
        print(f"  {where}: event type {kind!r} has no function; left where it is")
        return False
    status = deliver_once(eventgrid_webhook_url(settings.host_url, function), event)
    ok = 200 <= status <= 204
    print(f"  {where}: {event.get('subject')} -> {function}: HTTP {status or 'no answer'}")
    return ok


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    from autoretrain.workspace.local import catalog_rows

    rows = catalog_rows(settings.home, args.kind)
    if args.json:
        json.dump(rows, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    elif rows:
        _table(rows, list(rows[0]), sys.stdout)
    else:
        print(f"No {args.kind} in the local workspace at {settings.home}.")
    return 0


def cmd_ui(settings: Settings, args: argparse.Namespace) -> int:
    from autoretrain.local.mlflow_ui import run_ui

    return run_ui(settings.home, experiment=settings.experiment, host=args.host, port=args.port)


def cmd_publish(settings: Settings, args: argparse.Namespace) -> int:
    # Only the workspace's coordinates: AUTORETRAIN_WORKSPACE=azureml would also demand the app's storage
    # endpoints, datastore and compute, which publishing does not use (the deploy hook has no storage URIs).
    missing = [
        env_name
        for env_name, value in (
            ("AUTORETRAIN_AZUREML_SUBSCRIPTION_ID", settings.azureml_subscription_id),
            ("AUTORETRAIN_AZUREML_RESOURCE_GROUP", settings.azureml_resource_group),
            ("AUTORETRAIN_AZUREML_WORKSPACE", settings.azureml_workspace),
        )
        if not value
    ]
    if missing:
        raise ConfigError(
            f"publish registers the pipeline in an Azure ML workspace: set {', '.join(missing)} "
            "(`azd env get-values` prints them)."
        )
    from autoretrain.bootstrap import PIPELINE, ml_client
    from autoretrain.publish import publish

    # azure-ai-ml logs (to stderr, at INFO, set on import) a warning per experimental schema class it
    # loads and for the job-only keys (settings) a pipeline component leaves out, azure-identity every
    # credential it tried: noise here, where each line is a result and a failure is one line.
    for name in ("azure", "azure.ai.ml"):
        logging.getLogger(name).setLevel(logging.ERROR)
    client = ml_client(settings, show_progress=False)
    publish(client, pipeline=PIPELINE, name=settings.pipeline_component, out=sys.stdout, dry_run=args.dry_run)
    return 0


def _load_sample_module() -> Any:
    path = ROOT / "ml" / "sample" / "wine.py"
    spec = importlib.util.spec_from_file_location("autoretrain_demo_wine", path)
    if spec is None or spec.loader is None:
        raise AutoretrainError(f"{path}: cannot load the demo data module.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _demo_files(folder: Path, months: int) -> list[Path]:
    """The wine data as monthly drops, and one copy of a month with a typo, to be quarantined."""
    files: list[Path] = _load_sample_module().write_monthly_drops(folder, months=months, seed=0)
    good = files[-1].read_text(encoding="utf-8").splitlines()
    header = good[0].split(",")
    row = good[3].split(",")
    row[header.index("alcohol")] = "twelve"
    good[3] = ",".join(row)
    bad = folder / "2026-99-typo.csv"
    bad.write_text("\n".join(good) + "\n", encoding="utf-8")
    return [*files, bad]


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from autoretrain.local.host import configure_logging
    from autoretrain.local.stack import LocalStack

    started = time.monotonic()
    settings.home.mkdir(parents=True, exist_ok=True)
    log_path = settings.home / "logs" / "demo.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("a", encoding="utf-8")
    configure_logging(log_file)
    print(f"autoretrain demo: home {settings.home}, function logs in {log_path}", flush=True)
    drops = _demo_files(settings.home / "demo" / "drops", args.months)
    with contextlib.ExitStack() as running:
        if host_answers(settings.host_url):
            # `autoretrain up` is already running: drop into it instead of starting a second stack.
            print(f"  using the running autoretrain at {settings.host_url}", flush=True)
        else:
            stack = running.enter_context(LocalStack(settings, poll_interval=0.5))
            print(f"  Azurite {'started' if stack.azurite.started_here else 'already running'}, "
                  f"Functions host on {stack.host.url}, Event Grid watching '{settings.incoming_container}'",
                  flush=True)
        blobs, ledger = _blobs(settings), _ledger(settings)
        progress = _Progress(ledger, started)
        for path in drops:
            ref = blobs.upload(settings.incoming_container, path.name, path.read_bytes())
            key = WorkKey.for_blob(ref)
            progress.dropped[key] = (path.name, time.monotonic())
            print(f"  dropped {ref.path} ({path.stat().st_size} bytes)", flush=True)
            # One month after the other, as a customer would: the next drop waits until this one is
            # trained, so each new model is scored against the champion of the month before, on the
            # same test rows (a job scores the champion it was submitted with).
            progress.wait([key], lambda r: r.state.final, args.timeout)
        progress.wait(progress.dropped, lambda r: r.state.final, args.timeout)
        records = sorted(progress.records.values(), key=lambda r: r.blob.name)
        dropped = progress.dropped
    log_file.flush()
    print()
    _table([_status_row(r) for r in records], STATUS_COLUMNS, sys.stdout)
    quarantined = [r for r in records if r.state is LedgerState.QUARANTINED]
    for r in quarantined:
        copy = f"{settings.quarantine_container}/{r.blob.copy_name(r.key)}"
        print(f"\nquarantined {r.blob.path} -> {copy}\n  reason: {r.reason}")
    done = [r for r in records if r.state is LedgerState.DONE]
    print(f"\n{len(done)} of {len(records)} drops became models, {len(quarantined)} quarantined; "
          f"demo wall time {time.monotonic() - started:.1f} s.")
    story = (done or records)[-1].blob.name if records else "FILE"
    print(f"Where to look: the log lines in {log_file.name}; one file's story: `autoretrain status {story}`; "
          "the metric across retrains: `autoretrain ui`.")
    unfinished = [r for r in records if not r.state.final]
    return 1 if unfinished or len(records) < len(dropped) else 0


class _Progress:
    """Prints each drop's state changes as the ledger records them; keeps the latest records."""

    def __init__(self, ledger: Ledger, started: float) -> None:
        self._ledger = ledger
        self._started = started
        self.dropped: dict[WorkKey, tuple[str, float]] = {}
        self.records: dict[WorkKey, LedgerRecord] = {}

    def poll(self, key: WorkKey) -> LedgerRecord | None:
        record = self._ledger.get(key)
        previous = self.records.get(key)
        if record is None or (previous is not None and previous.state == record.state):
            return record
        self.records[key] = record
        name, at = self.dropped[key]
        detail = {
            LedgerState.SUBMITTED: (
                f"data {record.data_version}, job {record.job}, "
                f"trains on {record.trained_on} of {record.members} version(s)"
                + (f", scores v{record.champion} on the same rows" if record.champion else "")
            ),
            LedgerState.DONE: (
                f"model {record.model_version}, {time.monotonic() - at:.1f} s after the drop; gate: "
                + (record.decision or ("promoted" if record.promoted else "not promoted"))
            ),
        }.get(record.state, record.reason or "")
        print(f"  [{time.monotonic() - self._started:6.1f}s] {name:<18} {record.state.value:<11} {detail}", flush=True)
        return record

    def wait(self, keys: Iterable[WorkKey], done: Callable[[LedgerRecord], bool], timeout: float) -> None:
        pending, deadline = list(keys), time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            pending = [k for k in pending if not ((r := self.poll(k)) is not None and done(r))]
            if pending:
                time.sleep(0.1)


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
        print(f"autoretrain: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`autoretrain status --json | head`): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
