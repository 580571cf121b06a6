"""Exactly once, under random schedules, on the real local parts: Azurite for the ledger and the blobs,
the embedded workspace running the real pipeline. The thousand schedules over fakes are in
tests/unit/test_schedules.py; these eighteen (twelve with a job per file, six with one job in flight)
draw the same kinds of steps (seeded, so a failure names the seed that reproduces it):

- uploads to three paths, overwriting one another: good files, files bad in the head (ingest's
  check), and files bad only past the head (prep finds it, deep in the file);
- deliveries of BlobCreated, some twice at the same moment;
- a worker dying right before or after a port call;
- RunCompleted and RunStatusChanged(Completed) for one job delivered at the same moment, one of them
  sometimes dying in register_model;
- time passing past leases, reconcile passes, jobs running to their end.

Once the schedule settles, every blob version is accounted for: trained exactly once (one data
version whose bytes are exactly that version's, the new data of one job that made a model), or
quarantined once with a copy, or skipped because it was replaced before anything read it. Both with a
job per file and with the default, one job in flight, where the versions that wait join the next job.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from mlmodules import wine

from autoretrain import loop
from autoretrain.adapters.ledger import TableLedger
from autoretrain.adapters.localworkspace.workspace import LocalWorkspace, catalog_rows
from autoretrain.adapters.storage import AzureBlobStore, client_options
from autoretrain.bootstrap import PIPELINE
from autoretrain.contract import HEAD_BYTES, load_contract
from autoretrain.domain import JOB_TAG, BlobRef, LedgerState, WorkKey
from autoretrain.domain.events import JobFinished
from autoretrain.settings import LOCAL_STORAGE_TOPIC, LOCAL_WORKSPACE_TOPIC

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "ml" / "contract.yaml"
# The demo contract, each mode's: a job per file, or the default (one job in flight, bursts wait).
MODES = {"per-file": "training: {jobs_in_flight: 0}\n", "one-in-flight": ""}
SCHEDULES = 12
STEPS = 14
INGEST_CALLS = [("ledger", "claim"), ("ledger", "move"), ("blobs", "read_head"), ("blobs", "copy_to"),
                ("workspace", "register_data"), ("workspace", "register_training_set"), ("workspace", "submit")]


class WorkerDied(BaseException):
    """The worker running a delivery is gone at this point (what a SIGKILL leaves)."""


class Crashing:
    """A port whose first call of `method` dies, before or after doing its work."""

    def __init__(self, target: Any, method: str, *, after: bool) -> None:
        self._target, self._method, self._after, self._armed = target, method, after, True

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if name != self._method:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            armed, self._armed = self._armed, False
            if armed and not self._after:
                raise WorkerDied(f"before {name}")
            result = attr(*args, **kwargs)
            if armed:
                raise WorkerDied(f"after {name}")
            return result

        return call


@dataclass
class Parts:
    """What every schedule shares: Azurite, one embedded workspace (its warm step runner started
    once), and the files it uploads."""

    connection: str
    home: Path
    workspace: LocalWorkspace
    files: dict[str, bytes]


@pytest.fixture(scope="module")
def parts(azurite: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Parts]:
    home = tmp_path_factory.mktemp("schedules")
    blobs = AzureBlobStore(BlobServiceClient.from_connection_string(azurite, **client_options()))
    workspace = LocalWorkspace(home, pipeline=PIPELINE, contract=CONTRACT, blobs=blobs)
    frame = wine().wine_frame()
    good = frame.sample(frac=0.5, random_state=1).to_csv(index=False).encode()
    big = frame.sample(n=5000, replace=True, random_state=2).to_csv(index=False).encode()
    assert len(big) > HEAD_BYTES  # the bad value below is past what ingest reads
    lines = big.decode().splitlines()
    lines[-1] = "twelve" + lines[-1][lines[-1].index(","):]
    files = {
        "good": good,
        "bad_head": b"alcohol,cultivar\n13.2,class_0\n",
        "bad_deep": ("\n".join(lines) + "\n").encode(),
    }
    yield Parts(azurite, home, workspace, files)
    workspace.close()


@dataclass
class World:
    deps: loop.Deps
    parts: Parts
    incoming: str
    now: list[datetime]
    versions: list[tuple[BlobRef, str, bytes]] = field(default_factory=list)  # ref, kind, bytes

    def crashing(self, port: str, method: str, *, after: bool) -> loop.Deps:
        ports: dict[str, Any] = {"ledger": self.deps.ledger, "workspace": self.deps.workspace,
                                 "blobs": self.deps.blobs}
        ports[port] = Crashing(ports[port], method, after=after)
        return replace(self.deps, **ports)


def _world(parts: Parts, unique: str, mode: str = "per-file") -> World:
    blobs = AzureBlobStore(BlobServiceClient.from_connection_string(parts.connection, **client_options()))
    now = [datetime.now(UTC)]
    ledger = TableLedger.connect(
        TableServiceClient.from_connection_string(parts.connection), f"sched{unique}"
    )
    config = loop.LoopConfig(
        storage_topic=LOCAL_STORAGE_TOPIC, workspace_topic=LOCAL_WORKSPACE_TOPIC,
        incoming_container=f"in{unique}", quarantine_container=f"q{unique}", datasets_container=f"ds{unique}",
    )
    contract = parts.home / f"contract-{mode}.yaml"
    contract.write_text(CONTRACT.read_text(encoding="utf-8") + MODES[mode], encoding="utf-8")
    deps = loop.Deps(config=config, contract=load_contract(contract), workspace=parts.workspace, ledger=ledger,
                     blobs=blobs, clock=lambda: now[0])
    return World(deps, parts, config.incoming_container, now)


def _run_event(job: str, kind: str) -> JobFinished:
    key = WorkKey.of_job(job)
    return JobFinished(
        event_id=f"{kind}-{key}", event_type=f"Microsoft.MachineLearningServices.{kind}", topic=LOCAL_WORKSPACE_TOPIC,
        subject=f"experiments/x/runs/{job}", event_time=None, experiment_id="x",
        experiment_name="autoretrain", job=job, job_type="", job_status="Completed",
        job_tags={JOB_TAG: key.value},
    )


def _step(world: World, rng: random.Random, trace: list[str]) -> None:
    kind = rng.choice(["upload", "upload", "deliver", "deliver", "deliver", "crash", "crash", "complete",
                       "complete", "time", "reconcile", "drain", "burst"])
    deps = world.deps
    if kind == "upload":
        path, content = rng.randrange(3), rng.choice(["good", "good", "bad_head", "bad_deep"])
        data = world.parts.files[content]
        ref = deps.blobs.upload(world.incoming, f"drop-{path}.csv", data)
        world.versions.append((ref, content, data))
        trace.append(f"upload drop-{path}.csv {content}")
        return
    if kind == "burst":  # new files at once, each delivered at the same moment
        count = rng.randint(2, 3)
        refs = [deps.blobs.upload(world.incoming, f"burst-{len(world.versions)}-{n}.csv", world.parts.files["good"])
                for n in range(count)]
        world.versions.extend((ref, "good", world.parts.files["good"]) for ref in refs)
        trace.append(f"burst of {count}")
        _at_once([lambda ref=ref: loop.ingest_blob(ref, deps, event_id=f"ev-{WorkKey.for_blob(ref)}",
                                                   content_length=None) for ref in refs])
        return
    if kind == "time":
        minutes = rng.randint(1, 20)
        world.now[0] += timedelta(minutes=minutes)
        trace.append(f"time +{minutes} min")
        return
    if kind == "reconcile":
        trace.append("reconcile")
        loop.reconcile(deps, grace=timedelta(minutes=10))
        return
    if kind == "drain":
        trace.append("drain")
        assert world.parts.workspace.drain(180)
        return
    if not world.versions:
        return
    index = rng.randrange(len(world.versions))
    ref = world.versions[index][0]
    key = WorkKey.for_blob(ref)
    if kind == "deliver":
        times = rng.choice([1, 2])
        trace.append(f"deliver v{index} x{times}")
        _at_once([lambda: loop.ingest_blob(ref, deps, event_id=f"ev-{key}", content_length=None)] * times)
    elif kind == "crash":
        port, method = rng.choice(INGEST_CALLS)
        after = rng.random() < 0.5
        trace.append(f"crash v{index} {'after' if after else 'before'} {port}.{method}")
        _at_once([lambda: loop.ingest_blob(ref, world.crashing(port, method, after=after), event_id=f"ev-{key}",
                                           content_length=None)])
    elif kind == "complete":
        dying = rng.choice(["", "", "register_model", "submit"])  # submit: starting the next job
        dies = f" (one dies in {dying})" if dying else ""
        trace.append(f"complete v{index} RunCompleted+RunStatusChanged{dies}")
        crashing = world.crashing("workspace", dying, after=False) if dying else deps
        record = deps.ledger.get(key)
        job = record.job if record is not None and record.job else key.job_name  # the version's job
        _at_once([lambda: loop.complete(_run_event(job, "RunCompleted"), crashing),
                  lambda: loop.complete(_run_event(job, "RunStatusChanged"), deps)])


def _at_once(calls: list[Any]) -> None:
    """Run the calls at the same moment, as concurrent deliveries; a dying worker or a transient
    error (which the trigger answers with a 500, so Event Grid retries) is what a delivery may meet."""
    with ThreadPoolExecutor(len(calls)) as pool:
        for future in [pool.submit(call) for call in calls]:
            try:
                future.result()
            except WorkerDied:
                pass
            except Exception as exc:
                assert type(exc).__name__ in ("NotReadyError", "LedgerError"), repr(exc)


def _settle(world: World) -> None:
    """Leases run out, jobs run to their end, reconcile passes run, until no version is left unfinished."""
    for _ in range(6):
        world.now[0] += timedelta(hours=1)
        loop.reconcile(world.deps, grace=timedelta(minutes=10))
        assert world.parts.workspace.drain(300)
        loop.reconcile(world.deps, grace=timedelta(minutes=10))
        if all(r.state.final for r in world.deps.ledger.records()):
            return


def _new_data(parts: Parts, incoming: str) -> dict[str, int]:
    """How many jobs that made a model had each data version as new data: the last `new_files` members
    of the job's training set, as the workspace ran it."""
    models = {m["job"] for m in catalog_rows(parts.home, "models")}
    ours = {j.name for j in parts.workspace.jobs() if j.tags.get("blob", "").startswith(f"{incoming}/")}
    counts: dict[str, int] = {}
    for row in catalog_rows(parts.home, "jobs"):
        if row["name"] in models and row["name"] in ours:
            members = parts.workspace.training_set_members(row["data"])
            for version in members[-int(row["new_files"] or 1):]:
                counts[version] = counts.get(version, 0) + 1
    return counts


@pytest.mark.parametrize(("mode", "seed"), [("per-file", n) for n in range(SCHEDULES)]
                         + [("one-in-flight", n) for n in range(SCHEDULES // 2)])
def test_a_random_schedule_on_the_real_parts_accounts_for_every_blob_version_once(
    parts: Parts, unique: str, mode: str, seed: int
) -> None:
    rng = random.Random(seed)
    world = _world(parts, unique, mode)
    trace: list[str] = []
    for _ in range(STEPS):
        _step(world, rng, trace)
    _settle(world)

    deps = world.deps
    current = {item.ref.name: item.ref.etag for item in deps.blobs.list_blobs(world.incoming)}
    jobs = [j for j in parts.workspace.jobs() if j.tags.get("blob", "").startswith(f"{world.incoming}/")]
    models = {m["job"] for m in catalog_rows(parts.home, "models")}
    data_rows = [d["source"] for d in catalog_rows(parts.home, "data")]
    records = list(deps.ledger.records())
    new_data = _new_data(parts, world.incoming)
    problems: list[str] = []
    for ref, content, data in world.versions:
        key = WorkKey.for_blob(ref)
        record = deps.ledger.get(key)
        where = f"{ref.name}@{ref.etag} ({content})"
        # The jobs that had this version as their new data: its own (a job per file), or one of several.
        its_jobs = [j for j in jobs if j.tags.get("etag") == ref.etag or (record and j.name == record.job)]
        its_data = [s for s in data_rows if s == f"{deps.config.datasets_container}/{ref.copy_name(key)}"]
        if record is None:
            if current.get(ref.name) == ref.etag:
                problems.append(f"{where}: never accounted for")
            continue
        state = record.state
        if not state.final:
            problems.append(f"{where}: still {state.value}")
        elif state is LedgerState.DONE:
            snapshot = deps.blobs.read_head(
                BlobRef(deps.config.datasets_container, ref.copy_name(key), _etag(deps, ref, key)), 1 << 30
            )
            trained = new_data.get(str(record.data_version), 0)
            if content != "good" or trained != 1 or len(its_data) != 1 or record.job not in models:
                problems.append(f"{where}: done as the new data of {trained} job(s) with a model, "
                                f"data={len(its_data)} model={record.job in models}")
            if snapshot != data:
                problems.append(f"{where}: its data version's bytes are not its own")
        elif state is LedgerState.QUARANTINED:
            copy = deps.blobs.read_head(
                BlobRef(deps.config.quarantine_container, ref.copy_name(key), _etag(deps, ref, key, quarantine=True)),
                1 << 30,
            )
            deep = content == "bad_deep" and record.job is not None and "line" in (record.reason or "")
            head = content == "bad_head" and not its_jobs and not its_data
            if not (deep or head) or copy != data or record.job in models:
                problems.append(f"{where}: quarantined wrongly ({record.reason})")
        elif state is LedgerState.SKIPPED:
            if current.get(ref.name) == ref.etag or (record.job and record.job in models):
                problems.append(f"{where}: skipped but still there ({record.reason})")
        else:
            problems.append(f"{where}: {state.value}: {record.reason}")
    extra = {r.key for r in records} - {WorkKey.for_blob(ref) for ref, _, _ in world.versions}
    if extra:
        problems.append(f"ledger records for no upload: {sorted(k.value for k in extra)}")
    outcomes: dict[str, int] = {}
    for ref, content, _ in world.versions:
        found = deps.ledger.get(WorkKey.for_blob(ref))
        label = f"{content}->{found.state.value if found else 'replaced unseen'}"
        outcomes[label] = outcomes.get(label, 0) + 1
    print(f"{mode} seed {seed}: {len(trace)} steps, {outcomes}, jobs {len(jobs)}")
    assert not problems, f"seed {seed}:\n  " + "\n  ".join(problems) + "\nschedule:\n  " + "\n  ".join(trace)


def _etag(deps: loop.Deps, ref: BlobRef, key: WorkKey, *, quarantine: bool = False) -> str:
    container = deps.config.quarantine_container if quarantine else deps.config.datasets_container
    for item in deps.blobs.list_blobs(container):
        if item.ref.name == ref.copy_name(key):
            return item.ref.etag
    return "missing"


def test_overwrites_racing_ingest_handle_each_etag_once_with_its_own_bytes(parts: Parts, unique: str) -> None:
    """One path overwritten eight times while each version's event is being handled: every eTag
    ends once, trained on exactly its own bytes, or skipped because it was replaced before it was read."""
    world = _world(parts, unique)  # a job per file: each version's job is named by it
    deps = world.deps
    frame = wine().wine_frame()
    versions = [frame.sample(frac=0.6, random_state=seed).to_csv(index=False).encode() for seed in range(8)]
    assert len(set(versions)) == len(versions)
    with ThreadPoolExecutor(4) as pool:
        pending = []
        for data in versions:
            ref = deps.blobs.upload(world.incoming, "monthly.csv", data)
            world.versions.append((ref, "good", data))
            pending.append(pool.submit(loop.ingest_blob, ref, deps, event_id=f"ev-{ref.etag}", content_length=None))
            time.sleep(random.Random(len(pending)).choice([0, 0.02, 0.1]))  # some are read before they are replaced
        outcomes = [future.result() for future in pending]
    _settle(world)

    states: dict[str, int] = {}
    for (ref, _, data), outcome in zip(world.versions, outcomes, strict=True):
        key = WorkKey.for_blob(ref)
        record = deps.ledger.get(key)
        assert record is not None and record.state.final, (ref, outcome)
        states[record.state.value] = states.get(record.state.value, 0) + 1
        if record.state is LedgerState.DONE:
            snapshot = BlobRef(deps.config.datasets_container, ref.copy_name(key), _etag(deps, ref, key))
            assert deps.blobs.read_head(snapshot, 1 << 30) == data, f"{ref.etag}: trained on other bytes"
            assert [j.name for j in parts.workspace.jobs() if j.tags.get("etag") == ref.etag] == [record.job]
        else:
            assert record.state is LedgerState.SKIPPED and "replaced or deleted before it was read" in (
                record.reason or ""), record
    print(f"eight overwrites racing ingest: {states}")
    assert states.get("done", 0) >= 1  # the last version at least is still there to be trained on
