"""`reconcile` and `retrain`: run the loop's use cases by hand, in this process."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from autoretrain.cli.common import azurite_for
from autoretrain.domain import BlobRef, LedgerState, WorkKey
from autoretrain.domain.errors import AutoretrainError
from autoretrain.domain.ports import Ledger
from autoretrain.logs import printable
from autoretrain.settings import Settings, WorkspaceKind

__all__ = ["cmd_reconcile", "cmd_retrain"]


def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import timedelta

    from autoretrain.bootstrap import bootstrap, resume_jobs
    from autoretrain.local.host import configure_logging
    from autoretrain.loop import reconcile

    configure_logging(sys.stderr, logging.WARNING)
    grace = timedelta(seconds=settings.reconcile_grace_seconds if args.grace is None else args.grace)
    with azurite_for(settings):
        deps = bootstrap(settings, worker=False)
        try:
            # Jobs whose runner is gone (a command stopped by Ctrl-C while no stack ran): run here.
            taken = resume_jobs(deps.workspace)
            if taken:
                print(f"taking over {len(taken)} job(s) whose runner is gone: {', '.join(taken)}", flush=True)
            report = reconcile(deps, grace=grace)
            passes = [report]
            local = settings.workspace is WorkspaceKind.LOCAL
            if local and (taken or any(f.result.startswith("submitted") for f in report.found)):
                # Jobs submitted or taken over by this pass run in this process (local mode): wait, then finish them.
                print(f"waiting up to {args.timeout:.0f} s for the jobs this pass runs...", flush=True)
                deps.workspace.drain(args.timeout)
                passes.append(reconcile(deps, grace=grace))
        finally:
            deps.workspace.close()
    for number, one in enumerate(passes, start=1):
        print(f"pass {number}: {one.blobs_listed} blob(s) in '{settings.incoming_container}', "
              f"{one.records} ledger record(s), {one.jobs} job(s); found {len(one.found)}, errors {len(one.errors)}")
        for item in one.found:
            print(f"  {item.what:<16} {printable(item.blob)}  work_key={item.work_key}\n"
                  f"  {'':<16} -> {printable(item.result)}")
        for error in one.errors:
            print(f"  error: {printable(str(error))}")
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
         if r.first_key is None and r.blob.container == settings.incoming_container and r.blob.name == name),
        key=lambda r: r.created,
    )
    if not versions:
        raise AutoretrainError(
            f"{settings.incoming_container}/{name}: no version of it is in the ledger; "
            "see `autoretrain status` for the blobs and work keys it knows."
        )
    if len(versions) > 1:
        print(f"{printable(name)} has {len(versions)} versions in the ledger; retraining the newest, eTag "
              f"{versions[-1].blob.etag} (--etag picks another).")
    return versions[-1].blob


def cmd_retrain(settings: Settings, args: argparse.Namespace) -> int:
    from autoretrain.bootstrap import bootstrap
    from autoretrain.local.host import configure_logging
    from autoretrain.loop import Submitted, complete_record, retrain

    configure_logging(sys.stderr, logging.WARNING)
    with azurite_for(settings):
        deps = bootstrap(settings, worker=False)
        try:
            blob = _retrain_target(settings, deps.ledger, args.target, args.etag)
            outcome = retrain(blob, deps)
            record = getattr(outcome, "record", None)
            if not isinstance(outcome, Submitted) or record is None:
                print(printable(f"{blob.path}: {type(outcome).__name__.lower()}: {getattr(record, 'state', '')} "
                                f"{getattr(outcome, 'reason', '') or getattr(record, 'reason', '') or ''}".rstrip()))
                return 1
            print(f"retrain {record.attempt} of {printable(blob.path)} (eTag {blob.etag}): job {outcome.job.name} on "
                  f"{record.data_version}, work key {record.key}", flush=True)
            if settings.workspace is WorkspaceKind.LOCAL:
                # Local mode: the job runs in this process; wait for it, then finish it here.
                print(f"waiting up to {args.timeout:.0f} s for the job...", flush=True)
                deps.workspace.drain(args.timeout)
                finished = complete_record(deps.ledger.get(record.key) or record, deps)
                record = getattr(finished, "record", record)
            print(f"{record.key}: {record.state.value}"
                  + (f", model {record.model_version}" if record.model_version else "")
                  + (f"; {record.decision}" if record.decision else "")
                  + (f"; {printable(record.reason)}" if record.reason else ""))
            return 0 if record.state in (LedgerState.DONE, LedgerState.SUBMITTED) else 1
        finally:
            deps.workspace.close()
