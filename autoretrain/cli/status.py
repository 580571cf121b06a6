"""`status` and `list`: the ledger's records, one file's story, the local workspace's catalogue."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from autoretrain.bootstrap import operator
from autoretrain.cli.common import STATUS_COLUMNS, azurite_for, print_table, records_named, status_row
from autoretrain.domain import LedgerRecord
from autoretrain.domain.errors import AutoretrainError
from autoretrain.logs import printable
from autoretrain.loop.score import is_scoring
from autoretrain.settings import Settings

__all__ = ["cmd_list", "cmd_status"]


def _stories(settings: Settings, runs: list[LedgerRecord]) -> list[dict[str, Any]]:
    """Each run of one blob version as data: the ledger's row and timeline, the files that trained
    it (read from its training set: the record keeps only counts) and, in local mode, the job's
    steps from the embedded workspace's catalogue. Each catalogue or workspace is read once."""
    from autoretrain.settings import WorkspaceKind

    members = _members_reader(settings) if any(r.training_set for r in runs) else None
    steps: list[dict[str, Any]] = []
    if settings.workspace is WorkspaceKind.LOCAL and any(r.job for r in runs):
        from autoretrain.adapters.localworkspace.workspace import catalog_rows

        steps = catalog_rows(settings.home, "steps")
    stories = []
    for record in runs:
        story = record.as_row()
        story["training_files"] = list(members(record.training_set)) if members and record.training_set else []
        logs = Path(settings.home).resolve() / "workspace" / "jobs" / str(record.job) / "logs"
        story["steps"] = [
            {"step": s["step"], "status": s["status"], "seconds": s["seconds"], "exit_code": s["exit_code"],
             "log": str(logs / f"{s['step']}.log")}
            for s in steps if record.job and s["job"] == record.job
        ]
        stories.append(story)
    return stories


def _members_reader(settings: Settings) -> Callable[[str], tuple[str, ...]]:
    """training set ("name:version") -> its data versions, oldest first (empty when unreadable)."""
    from autoretrain.settings import WorkspaceKind

    if settings.workspace is WorkspaceKind.LOCAL:
        from autoretrain.adapters.localworkspace.workspace import catalog_rows

        sets = {f"{r['name']}:{r['version']}": tuple(r["members"]) for r in catalog_rows(settings.home, "trainsets")}
        return lambda training_set: sets.get(training_set, ())
    from autoretrain.bootstrap import bootstrap

    workspace = bootstrap(settings, worker=False).workspace

    def read(training_set: str) -> tuple[str, ...]:
        try:
            return workspace.training_set_members(training_set)
        except AutoretrainError as exc:
            print(printable(f"training set {training_set}: {exc}"), file=sys.stderr)
            return ()

    return read


def _print_story(story: dict[str, Any], out: TextIO) -> None:
    run = f"retrain {story['attempt']}" if story["attempt"] else "first run"
    lines = [f"{story['blob']}  eTag {story['etag']}  work key {story['key']}  ({run}): {story['state']}"]
    for moved in story["history"]:
        lines.append(f"  {moved['at'].replace('T', ' ')[:23]}  {moved['state']:<11} {moved['note']}")
    lines += [*_data_lines(story), *_job_lines(story), *_model_lines(story), *_held_lines(story)]
    if story["decision"]:
        lines.append(f"  {'held' if story['state'] == 'held' else 'gate':<9} {story['decision']}")
    if story["reason"]:
        lines.append(f"  reason    {story['reason']}")
    # Names, notes and reasons come from outside (a blob's name, an exception's text): one line each.
    out.write("".join(f"{printable(line)}\n" for line in lines))


def _data_lines(story: dict[str, Any]) -> list[str]:
    if not story["data_version"]:
        return []
    if story["state"] == "held":  # its job only scored the champion on it
        return [f"  data      {story['data_version']}, scored by the champion in {story['training_set']}; "
                "it joins later training windows"]
    files = story["training_files"]
    trained = files[-story["trained_on"]:] if story["trained_on"] else files
    window = ", ".join(trained) or story["data_version"]
    of = f"{story['trained_on']} of {story['members']}: " if story["members"] else ""
    return [f"  data      {story['data_version']}, trained in {story['training_set']} (window: {of}{window})"]


def _job_lines(story: dict[str, Any]) -> list[str]:
    if not story["job"]:
        return []
    steps = ", ".join(f"{s['step']} {s['status'].lower()} {s['seconds']} s" for s in story["steps"]
                      if s["seconds"] is not None)
    return [f"  job       {story['job']}" + (f": {steps}" if steps else ""),
            *(f"            {step['step']} log: {step['log']}" for step in story["steps"])]


def _model_lines(story: dict[str, Any]) -> list[str]:
    if not story["model_version"]:
        return []
    primary = story["primary_metric"]
    value = (story["metrics"] or {}).get(primary)
    champion = (story["champion_metrics"] or {}).get(primary)
    numbers = f"{primary} {value:.4f}" if value is not None else ""
    if champion is not None:
        numbers += f" against the champion's {champion:.4f} on the same {story['test_rows']} test rows"
    return [f"  model     {story['model_version']}{', promoted' if story['promoted'] else ''}: {numbers}"]


def _held_lines(story: dict[str, Any]) -> list[str]:
    """A held version: the champion's score on its rows beside the value it was promoted with."""
    if story["state"] != "held" or not story["metrics"]:
        return []
    primary = story["primary_metric"]
    value, promoted = story["metrics"].get(primary), (story["champion_metrics"] or {}).get(primary)
    return [f"  champion  {story['champion']} scored {primary} {value:.4f} on its {story['test_rows']} rows "
            f"(promoted with {promoted:.4f}): nothing trained"]


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    with azurite_for(settings):
        records = sorted(operator(settings).ledger.records(), key=lambda r: r.created)
        unlistable = () if args.blob else _unlistable(settings)
    if args.blob:
        runs = records_named(settings, records, args.blob)
        if not runs:
            raise AutoretrainError(
                f"{printable(args.blob)}: no blob version or work key of that name in the ledger; "
                "`autoretrain status` lists them."
            )
        stories = _stories(settings, runs)
        if args.json:
            json.dump(stories, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            for story in stories:
                _print_story(story, sys.stdout)
        return 0
    _print_overview(settings, records, unlistable, as_json=args.json)
    return 0


def _print_overview(settings: Settings, records: list[LedgerRecord], unlistable: tuple[str, ...], *,
                    as_json: bool) -> None:
    """The table of every record (or its JSON), the jobs of several versions, one line of what the
    files cost, and the names that cannot be listed."""
    rows = [status_row(r) for r in records]
    jobs = _jobs(records)
    if as_json:
        # Each record also says how many versions its job had as new data (a burst's job: several).
        json.dump([{**r.as_row(), "job_new_versions": jobs[r.job]["new_versions"] if r.job else None}
                   for r in records], sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif rows:
        print_table(rows, STATUS_COLUMNS, sys.stdout)
        if len(jobs) < len([r for r in records if r.job]):  # some job trained several versions: show the jobs
            print()
            print_table(list(jobs.values()), ("job", "new_versions", "trained_on", "states"), sys.stdout)
    else:
        print("No blob versions in the ledger yet: drop a file with `autoretrain drop FILE`.")
    # Beside the JSON (on stderr), not in it: `status --json` stays the list of records scripts read.
    if records:
        print(_summary(records, jobs), file=sys.stderr if as_json else sys.stdout)
    if unlistable:
        _print_unlistable(settings, unlistable, sys.stderr if as_json else sys.stdout)


def _jobs(records: list[LedgerRecord]) -> dict[str, dict[str, Any]]:
    """Each job the ledger names: how many versions were its new data, how many files it trained on
    (its whole window), and the states of its versions."""
    jobs: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.job:
            job = jobs.setdefault(record.job, {"job": record.job, "new_versions": 0, "trained_on": 0, "states": ""})
            job["new_versions"] += 1
            job["trained_on"] = max(job["trained_on"], record.trained_on)
            states = set(filter(None, job["states"].split(","))) | {record.state.value}
            job["states"] = ",".join(sorted(states))
    return jobs


def _summary(records: list[LedgerRecord], jobs: dict[str, dict[str, Any]]) -> str:
    """One line of what the files cost: versions, jobs and the file trainings they did, and the states."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record.state.value] = counts.get(record.state.value, 0) + 1
    states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    trainings = sum(job["trained_on"] for job in jobs.values())
    scoring = sum(1 for r in records if is_scoring(r, r.job))
    scored = f" and {scoring} scoring job(s) that trained nothing" if scoring else ""
    return (f"{len(records)} blob version(s): {states}; {len(jobs) - scoring} training job(s){scored}, "
            f"{trainings} file training(s) in all (a job trains on its whole window)")


def _unlistable(settings: Settings) -> tuple[str, ...]:
    """The prefixes of the incoming container under which a name cannot be listed (Azurite answers
    500 for a name with a control character): no listing finds that blob, so reconcile never ingests it.

    Found by listing the container, as reconcile does: one request per 5,000 names (reading the
    ledger, which status does anyway, takes one per 1,000 records), and for each unlistable name at
    most 96 listings per character of its prefix, 8 characters deep (the store's split). A container
    that cannot be listed (it does not exist yet, or this identity may not list it) shows none."""
    # The listing's own warnings (the store's splits, the SDK's on each 500): status tells them once.
    quiet = [logging.getLogger(name) for name in ("autoretrain.adapters.storage", "azure")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        return operator(settings).unlistable(settings.incoming_container)
    except AutoretrainError as exc:
        print(printable(f"autoretrain: cannot list {settings.incoming_container!r} for the names it cannot list: "
                        f"{exc}"), file=sys.stderr)
        return ()
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


def _print_unlistable(settings: Settings, prefixes: tuple[str, ...], out: TextIO) -> None:
    out.write(f"\nNames in {printable(repr(settings.incoming_container))} that cannot be listed (Azurite/Blob Storage "
              "refuse them), so neither a listing nor reconcile finds them:\n")
    for prefix in prefixes:
        out.write(f"  prefix {printable(repr(prefix))}: run `autoretrain replay <name>` with the full name "
                  "(bash types a control character as $'\\x01')\n")


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    from autoretrain.adapters.localworkspace.workspace import catalog_rows

    rows = catalog_rows(settings.home, args.kind)
    if args.json:
        json.dump(rows, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    elif rows:
        print_table(rows, list(rows[0]), sys.stdout)
    else:
        print(f"No {args.kind} in the local workspace at {settings.home}.")
    return 0
