"""`replay`: redeliver a blob's event, or the dead-lettered events, to the running host."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from autoretrain.bootstrap import operator
from autoretrain.cli.common import azurite_for
from autoretrain.domain import BlobRef, WorkKey
from autoretrain.domain.errors import AutoretrainError
from autoretrain.local import host_answers
from autoretrain.logs import printable
from autoretrain.settings import Settings

__all__ = ["cmd_replay"]


def _say(text: str) -> None:
    """A line for the person at the terminal: the names and errors in it, control characters escaped."""
    print(printable(text))


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

    from autoretrain.local.eventgrid import blob_created_event, deliver_once, eventgrid_webhook_url

    if args.times < 1 or args.concurrency < 1:
        raise AutoretrainError("--times and --concurrency must be at least 1.")
    name = args.blob.removeprefix(f"{settings.incoming_container}/")
    stores = operator(settings)
    try:
        blob = stores.blobs.describe(settings.incoming_container, name)
    except AutoretrainError as exc:
        raise AutoretrainError(printable(f"{settings.incoming_container}/{name}: cannot read it ({exc}); ")
                               + "give a blob name from `autoretrain status`.") from None
    if blob is None:
        raise AutoretrainError(printable(f"{settings.incoming_container}/{name}: no such blob; ")
                               + "give a blob name from `autoretrain status`.")
    # One event, delivered N times: what Event Grid does when it retries (same id, same eTag).
    event = blob_created_event(
        topic=settings.storage_topic, container=settings.incoming_container, name=name,
        etag=blob.ref.etag, size=blob.size, content_type=blob.content_type,
        last_modified=blob.last_modified, url=stores.blob_url(settings.incoming_container, name),
    )
    url = eventgrid_webhook_url(settings.host_url, "ingest")
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        statuses = list(pool.map(lambda _: deliver_once(url, event), range(args.times)))
    counts: dict[int, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    failed = sum(n for status, n in counts.items() if not 200 <= status <= 204)
    answers = ", ".join(f"HTTP {s or 'no answer'} x{n}" for s, n in sorted(counts.items()))
    _say(f"delivered {event['subject']} (eTag {event['data']['eTag']}) {args.times} time(s), "
          f"{args.concurrency} at once: {answers}")
    key = WorkKey.for_blob(BlobRef(settings.incoming_container, name, event["data"]["eTag"]))
    with azurite_for(settings):
        record = operator(settings).ledger.get(key)
    _say(f"ledger: {record.state.value if record else 'no record'}"
          + (f", job {record.job}" if record and record.job else ""))
    return 1 if failed else 0


def _replay_deadletters(settings: Settings, container_name: str) -> int:
    results: list[bool] = []
    folder = settings.home / "deadletter"
    for path in sorted(folder.glob("*.json")):
        try:
            text = path.read_bytes()
        except OSError as exc:
            _say(f"  {path.name}: unreadable ({exc}); left where it is")
            results.append(False)
            continue
        results.append(_replay_records(settings, text, path.name))
        if results[-1]:
            (folder / "replayed").mkdir(parents=True, exist_ok=True)
            path.replace(folder / "replayed" / path.name)
    with azurite_for(settings):
        container = operator(settings).deadletters(container_name)
        for name, content in container.pending():
            results.append(_replay_records(settings, content, f"{container_name}/{name}"))
            if results[-1]:
                # Kept, marked: the dead-letter record stays the evidence of what happened.
                container.mark_replayed(name, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    failed = results.count(False)
    _say(f"replayed {len(results) - failed} dead-letter record(s), {failed} failed")
    return 1 if failed else 0


def _replay_records(settings: Settings, text: bytes, where: str) -> bool:
    """Redeliver the event(s) of one dead-letter file: a record, or Event Grid's array of them."""
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        _say(f"  {where}: not JSON ({exc}); left where it is")
        return False
    records = parsed if isinstance(parsed, list) else [parsed]
    return all([_replay_one(settings, one, where) for one in records])


def _replay_one(settings: Settings, record: Any, where: str) -> bool:
    from autoretrain.local.eventgrid import DEADLETTER_KEYS, function_for, redeliver_record

    if not isinstance(record, dict):
        _say(f"  {where}: not an event object; left where it is")
        return False
    event = {k: v for k, v in record.items() if k not in DEADLETTER_KEYS}
    if function_for(event) is None:
        kind = event.get("eventType") or event.get("type")
        _say(f"  {where}: event type {kind!r} has no function; left where it is")
        return False
    function, status = redeliver_record(record, settings.host_url)
    _say(f"  {where}: {event.get('subject')} -> {function}: HTTP {status or 'no answer'}")
    return 200 <= status <= 204
