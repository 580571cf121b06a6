"""Benchmark: ingest throughput and latency through the local Functions host, with duplicate deliveries.

Starts the local stack in a subprocess on a fresh home, with its own Azurite ports, host port,
containers and ledger table (as tests/localstack.py does), and no Event Grid watcher, so every event
comes from this script:
  1. uploads --blobs small CSV files, valid under ml/contract.yaml, to the incoming container;
  2. builds one Microsoft.Storage.BlobCreated event per blob, as the local Event Grid builds it
     (autoretrain.local.eventgrid.blob_created_event, from the container listing);
  3. POSTs them to the host's webhook (/runtime/webhooks/eventgrid?functionName=ingest) from
     --concurrency client threads with keep-alive connections; --dup-share of all posts are
     redeliveries of an event already posted (same id, as Event Grid retries), half of them right
     behind the original (in flight at the same time), half later;
  4. reports posts/s over the wall time of all posts, and per-request latency p50/p99; then posts
     every event once more (all duplicates, on the full ledger; --no-replay skips it);
  5. checks that every blob ended with exactly one ledger record (`autoretrain status --json`) in
     one job at most (`autoretrain list jobs --json`; with one job in flight, the default, a version
     accepted while a job runs waits for the next), that every post was answered 200, and, from the
     host's log, that each blob was accepted once (left waiting, or its job started) and every
     delivery logged one outcome (a redelivery: `duplicate`, or `submitted` when it started the job
     of the versions waiting then, itself among them).

Each ingest of a new blob submits a training job to the local workspace. The project has no
setting that queues jobs without running them, so there are two modes (--jobs):
  hold  the host is this script's `--serve-held` mode: `autoretrain up --without-eventgrid`'s
        LocalStack, with the runtime's LocalWorkspace built so that submitted jobs stay `queued` in
        the catalogue (as `close()` leaves them; the next `autoretrain up` resumes them). Ingest is
        unchanged: claim, head check, copy, data version, training set, job row, ledger move.
  run   the host is `autoretrain up --without-eventgrid` itself: jobs run in the background
        (two at a time, window `all`) and compete for the CPU, as they would on this laptop.
  both  (default) hold, then run, each on its own fresh stack.

The reconcile timer is set to once a year so that a pass (every 5 minutes by default) does not land
inside one run and not the other; the start-up pass still runs, on an empty ledger.

    .venv/bin/python bench/ingest_throughput.py [--blobs 700] [--dup-share 0.3] [--concurrency 12]
                                                [--jobs both|hold|run] [--keep] [--profile]
                                                [--floor] [--repeat N]

--floor runs bench/storage_floor.py before the first run and after each, and prints each `hold`
run's CPU per post (host + Azurite) against the floors right before and after it, then their median
over --repeat runs: the machine's speed drifts by the hour, so the two are measured side by side.

It also prints the CPU seconds the host, Azurite, the jobs and everything else on the machine used
during the posts, and the median time between the ingest's log lines for the first and the last
tenth of the ingests. --profile samples the `hold` host's ingest threads (a wall-clock stack sampler;
py-spy is not installed) and keeps the result.

Numbers go to stdout; latest ones in bench/README.md. Not run by the tests.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import io
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# NCRONTAB for "midnight on 1 January": the timer does not fire during a run.
RARE_SCHEDULE = "0 0 0 1 1 *"
PHASES = ("ingest.claimed", "ingest.contract_ok", "ingest.data_registered", "ingest.training_set",
          "ingest.pipeline_submitted", "ingest.submitted")


def _free_port(avoid: frozenset[int] | set[int] = frozenset()) -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port


def _connection_string(blob_port: int, table_port: int) -> str:
    from autoretrain.local.azurite import azurite_connection

    return azurite_connection(blob_port, table_port)


# ---- the host in `hold` mode (a subprocess of this script) ----------------------------------------


def held_deps() -> Any:
    """The loop's dependencies from the environment's settings, with a local workspace that keeps
    submitted jobs queued (ingest unchanged; the job is not run), its pipeline already loaded."""
    from autoretrain import bootstrap as boot
    from autoretrain.adapters.localworkspace.workspace import LocalWorkspace
    from autoretrain.adapters.storage import AzureBlobStore
    from autoretrain.settings import Settings

    settings = Settings.from_env()
    blobs = AzureBlobStore(boot.blob_service(settings))
    workspace = LocalWorkspace(
        settings.home, pipeline=boot.PIPELINE, contract=settings.contract, blobs=blobs,
        experiment=settings.experiment, data_asset=settings.data_asset, model_name=settings.model_name,
        on_event=None, warm=False,
    )
    # Submit writes the job row (status queued) as always; the job is not handed to the job runner.
    # (A private name: if it moves, the held jobs run, and the run's `jobs` CPU says so.)
    workspace._runner.start = lambda job: None  # type: ignore[method-assign]
    workspace.pipeline()  # what the real workspace preloads on a thread: not during the run
    return boot.bootstrap(settings, workspace=workspace, blobs=blobs)


def _held_runtime() -> None:
    """This process's runtime (bootstrap.runtime()): the held-jobs dependencies."""
    from autoretrain import bootstrap as boot

    boot._runtime = held_deps()


def serve_held_worker(listening: int) -> int:
    """A worker process of the held stack's host (FUNCTIONS_WORKER_PROCESS_COUNT > 1)."""
    from autoretrain.local.hostworker import serve

    return serve(listening, prepare=_held_runtime)


def serve_held() -> int:
    """`autoretrain up --without-eventgrid`, with a local workspace that keeps submitted jobs queued."""
    from autoretrain.local.host import configure_logging
    from autoretrain.local.stack import LocalStack
    from autoretrain.settings import Settings

    configure_logging()
    settings = Settings.from_env()
    stack = LocalStack(settings, eventgrid=False,
                       worker_command=[sys.executable, str(Path(__file__).resolve()), "--serve-held-worker"])
    sampler = StackSampler(Path(os.environ["BENCH_SAMPLE_PROFILE"])) if os.environ.get("BENCH_SAMPLE_PROFILE") else None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    if sampler is not None:
        signal.signal(signal.SIGUSR1, lambda *_: sampler.start())
        signal.signal(signal.SIGUSR2, lambda *_: sampler.stop())
    # Azurite first (the ledger table is created when the runtime is built), then the runtime the
    # host's functions get from bootstrap.runtime(), then the rest of the stack (it reuses Azurite
    # and still stops it, since this object started it).
    stack.azurite.start()
    try:
        _held_runtime()
        with stack:
            print(f"held-jobs stack up, host {stack.host.url}", flush=True)
            while not stop.wait(0.5):
                pass
    finally:
        if sampler is not None:
            sampler.stop()
        stack.azurite.stop()
    return 0


class StackSampler:
    """A wall-clock sampling profiler of the host's threads (py-spy is not installed): every 2 ms,
    each thread running the ingest function is sampled; inclusive and leaf counts per function,
    written as text when stopped. Started by SIGUSR1 and stopped by SIGUSR2 around the posts."""

    def __init__(self, out: Path, interval: float = 0.002) -> None:
        self.out, self.interval = out, interval
        self.inclusive: Counter[str] = Counter()
        self.leaf: Counter[str] = Counter()
        self.states: Counter[str] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            self.samples += 1
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                names = []
                f: Any = frame
                while f is not None:
                    code = f.f_code
                    names.append(f"{Path(code.co_filename).name}:{code.co_name}")
                    f = f.f_back
                if "ingest.py:ingest" not in names:
                    self.states["waiting for a host slot" if "host.py:_execute" in names else "other"] += 1
                    continue
                self.states["in ingest"] += 1
                self.leaf[names[0]] += 1
                for name in set(names):
                    self.inclusive[name] += 1

    def stop(self) -> None:
        if self._thread is None or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        total = max(self.states["in ingest"], 1)
        lines = [f"{self.samples} ticks; thread-samples by state: {dict(self.states)}",
                 "", "inclusive share of in-ingest samples:"]
        lines += [f"  {n / total:6.1%}  {name}" for name, n in self.inclusive.most_common(80)]
        lines += ["", "leaf (self) share of in-ingest samples:"]
        lines += [f"  {n / total:6.1%}  {name}" for name, n in self.leaf.most_common(40)]
        self.out.write_text("\n".join(lines) + "\n")


# ---- the benchmark -----------------------------------------------------------------------------


def small_csv(rng: random.Random, rows: int) -> bytes:
    """`rows` rows of ml/sample/sample.csv (three cultivars, every class at least twice), a little noise."""
    with (ROOT / "ml" / "sample" / "sample.csv").open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        base = list(reader)
    by_class: dict[str, list[list[str]]] = defaultdict(list)
    for row in base:
        by_class[row[-1]].append(row)
    picked = [r for rows_ in by_class.values() for r in rows_[:2]]
    picked += rng.sample(base, max(rows - len(picked), 0))
    rng.shuffle(picked)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in picked[:rows]:
        row = list(row)
        row[0] = f"{float(row[0]) + rng.uniform(-0.05, 0.05):.3f}"  # alcohol: every file differs
        writer.writerow(row)
    return out.getvalue().encode()


@dataclass
class Post:
    index: int          # the blob
    duplicate: bool
    concurrent: bool    # a duplicate queued right behind its original
    start: float = 0.0
    end: float = 0.0
    status: int = 0
    error: str = ""


@dataclass
class Stack:
    mode: str
    home: Path
    env: dict[str, str]
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    children: list[int] = field(default_factory=list)


def start_stack(mode: str, workdir: Path, token: str, profile: bool = False, processes: int = 1) -> Stack:
    from autoretrain.local import host_answers

    home = workdir / f"{mode}-home"
    home.mkdir(parents=True)
    blob_port = _free_port()
    table_port = _free_port({blob_port, blob_port + 1})
    host_port = _free_port({blob_port, blob_port + 1, table_port})
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORETRAIN_")}
    env.update(
        AUTORETRAIN_HOME=str(home),
        AUTORETRAIN_HOST_URL=f"http://127.0.0.1:{host_port}",
        AUTORETRAIN_STORAGE=_connection_string(blob_port, table_port),
        AUTORETRAIN_INCOMING_CONTAINER=f"in{token}",
        AUTORETRAIN_QUARANTINE_CONTAINER=f"q{token}",
        AUTORETRAIN_DATASETS_CONTAINER=f"ds{token}",
        AUTORETRAIN_LEDGER_TABLE=f"ledger{token}",
        AUTORETRAIN_RECONCILE_SCHEDULE=RARE_SCHEDULE,
        FUNCTIONS_WORKER_PROCESS_COUNT=str(processes),
        PYTHONPATH=str(ROOT),
    )
    if profile and mode == "hold":
        env["BENCH_SAMPLE_PROFILE"] = str(workdir / "hold-profile.txt")
    if mode == "hold":
        argv = [sys.executable, str(Path(__file__).resolve()), "--serve-held"]
    else:
        argv = [sys.executable, "-m", "autoretrain.cli", "up", "--without-eventgrid"]
    log = workdir / f"{mode}-host.log"
    with log.open("wb") as out:
        # Its own session, like a terminal's job: a Ctrl-C here reaches this script, which stops it.
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    stack = Stack(mode, home, env, f"http://127.0.0.1:{host_port}", process, log)
    deadline = time.monotonic() + 90
    while not host_answers(stack.url):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the {mode} stack did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    stack.children = _descendants(process.pid)
    return stack


def interrupt_on_signals() -> None:
    """SIGTERM and SIGHUP end a run like Ctrl-C (KeyboardInterrupt), once: a second signal must not
    cut the clean-up short. Set explicitly: a shell starts a background job with SIGINT ignored."""

    def interrupt(*_: Any) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU seconds (user + system) so far: the host process, Azurite, job processes, this client."""
    import psutil

    def used(proc: psutil.Process) -> float:
        t = proc.cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    out = {"host": 0.0, "azurite": 0.0, "jobs": 0.0, "client": used(psutil.Process())}
    try:
        host = psutil.Process(stack.process.pid)
        t = host.cpu_times()
        out["host"] = t.user + t.system
        for child in host.children(recursive=True):
            with _suppress():
                command = " ".join(child.cmdline())
                if "hostworker" in command or "--serve-held-worker" in command:  # the host's worker processes
                    t = child.cpu_times()
                    out["host"] += t.user + t.system
                    continue
                kind = "azurite" if "azurite" in command else "jobs"
                out[kind] += used(child)
    except psutil.Error:
        pass
    # Everything else on the machine (another process competing for the cores skews the numbers).
    busy = psutil.cpu_times()
    out["machine"] = sum(getattr(busy, f) for f in ("user", "nice", "system", "irq", "softirq", "steal")
                         if hasattr(busy, f))
    return out


def stop_stack(stack: Stack) -> None:
    """SIGINT to the stack's group, as Ctrl-C in its terminal; then make sure its children are gone."""
    import psutil

    known = set(stack.children) | set(_descendants(stack.process.pid))
    if stack.process.poll() is None:
        try:
            os.killpg(stack.process.pid, signal.SIGINT)
            stack.process.wait(timeout=90)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with _suppress():
                os.killpg(stack.process.pid, signal.SIGKILL)
            stack.process.wait()
    for pid in known:  # Azurite and the warm runners are in their own sessions
        with _suppress():
            proc = psutil.Process(pid)
            proc.terminate()
            proc.wait(10)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return True


def upload_blobs(stack: Stack, count: int, rows: int, seed: int) -> list[dict[str, Any]]:
    """Upload `count` files; return one BlobCreated event per blob, built as the local Event Grid does."""
    from azure.storage.blob import BlobServiceClient

    from autoretrain.adapters.storage import AzureBlobStore, client_options
    from autoretrain.local.eventgrid import blob_created_event
    from autoretrain.settings import Settings

    settings = Settings.from_env(stack.env)
    service = BlobServiceClient.from_connection_string(settings.storage_connection, **client_options())
    store = AzureBlobStore(service)
    container = settings.incoming_container
    rng = random.Random(seed)
    payloads = [(f"drop-{i:05d}.csv", small_csv(rng, rows)) for i in range(count)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda item: store.upload(container, *item), payloads))
    client = service.get_container_client(container)
    events = []
    for listed in sorted(store.list_blobs(container), key=lambda b: b.ref.name):
        events.append(blob_created_event(
            topic=settings.storage_topic, container=container, name=listed.ref.name, etag=listed.ref.etag,
            size=listed.size, content_type=listed.content_type, last_modified=listed.last_modified,
            url=client.get_blob_client(listed.ref.name).url,
        ))
    if len(events) != count:
        raise SystemExit(f"uploaded {count} blobs, the listing shows {len(events)}")
    return events


def schedule(count: int, dup_share: float, concurrency: int, seed: int) -> list[Post]:
    """Originals in order; each duplicate after its original: half within the next `concurrency`
    posts (in flight together), half later."""
    rng = random.Random(seed)
    dups = round(count * dup_share / (1 - dup_share))
    keyed: list[tuple[float, Post]] = [(float(i), Post(i, False, False)) for i in range(count)]
    for n in range(dups):
        original = rng.randrange(count)
        if n % 2 == 0:
            keyed.append((original + rng.uniform(0.01, max(concurrency / 2, 1)), Post(original, True, True)))
        else:
            keyed.append((original + rng.uniform(2 * concurrency, max(count / 4, 3 * concurrency)),
                          Post(original, True, False)))
    keyed.sort(key=lambda kv: kv[0])
    return [p for _, p in keyed]


def post_all(url: str, events: list[dict[str, Any]], posts: list[Post], concurrency: int) -> float:
    """POST every event over keep-alive connections, `concurrency` at a time; the wall time."""
    parts = url.removeprefix("http://").split(":")
    host, port = parts[0], int(parts[1])
    path = "/runtime/webhooks/eventgrid?functionName=ingest"
    bodies = [json.dumps([e]).encode() for e in events]
    headers = {"Content-Type": "application/json", "aeg-event-type": "Notification"}
    lock = threading.Lock()
    cursor = iter(posts)

    def worker() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        try:
            while True:
                with lock:
                    post = next(cursor, None)
                if post is None:
                    return
                post.start = time.perf_counter()
                try:
                    conn.request("POST", path, body=bodies[post.index], headers=headers)
                    answer = conn.getresponse()
                    answer.read()
                    post.status = answer.status
                except (OSError, http.client.HTTPException) as exc:
                    post.error = f"{type(exc).__name__}: {exc}"
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=60)
                post.end = time.perf_counter()
        finally:
            conn.close()

    began = time.perf_counter()
    threads = [threading.Thread(target=worker, name=f"client-{i}") for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - began


def cli_json(stack: Stack, *args: str) -> Any:
    done = subprocess.run([sys.executable, "-m", "autoretrain.cli", *args], cwd=ROOT, env=stack.env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"autoretrain {' '.join(args)} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


_LINE = re.compile(r"^\[(?P<ts>[0-9T:.-]+)Z\] (?P<event>[a-z_.]+) (?P<fields>.*)$")


def host_log(path: Path) -> list[tuple[datetime, str, dict[str, str]]]:
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        m = _LINE.match(raw)
        if not m:
            continue
        fields = dict(re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', m["fields"]))
        lines.append((datetime.fromisoformat(m["ts"]), m["event"], fields))
    return lines


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def run_once(mode: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from autoretrain.domain import WorkKey
    from autoretrain.domain.events import parse_blob_created

    token = f"{mode}{int(time.time()) % 100000}"
    started = time.monotonic()
    stack = start_stack(mode, workdir, token, args.profile, args.processes)
    try:
        print(f"\n[{mode}] stack up in {time.monotonic() - started:.1f} s, home {stack.home}", flush=True)
        total = args.blobs + args.warmup
        events = upload_blobs(stack, total, args.rows, args.seed)
        keys = [WorkKey.for_blob(parse_blob_created(e).blob) for e in events]
        print(f"[{mode}] uploaded {total} blobs of {args.rows} rows (~{len(json.dumps(events[0]))} B event)",
              flush=True)
        # Warm-up: the first calls import what the function needs and create the datasets container.
        warm = [Post(i, False, False) for i in range(args.warmup)]
        post_all(stack.url, events, warm, min(args.concurrency, max(args.warmup, 1)))
        posts = [Post(p.index + args.warmup, p.duplicate, p.concurrent)
                 for p in schedule(args.blobs, args.dup_share, args.concurrency, args.seed)]
        if args.profile and mode == "hold":
            os.kill(stack.process.pid, signal.SIGUSR1)
        before = cpu_seconds(stack)
        wall = post_all(stack.url, events, posts, args.concurrency)
        after = cpu_seconds(stack)
        if args.profile and mode == "hold":
            os.kill(stack.process.pid, signal.SIGUSR2)
        # Then every event once more: a redelivery storm, all duplicates, on the now full ledger.
        replay = [Post(i, True, False) for i in range(args.warmup, total)] if args.replay else []
        replay_wall = post_all(stack.url, events, replay, args.concurrency) if replay else 0.0
        cpu = {k: after[k] - before.get(k, 0.0) for k in after}
        cpu["others"] = max(cpu.pop("machine") - sum(cpu.values()), 0.0)
        measured_at = time.monotonic()

        # ---- numbers
        lat = [(p.end - p.start) * 1000 for p in posts]
        new = [(p.end - p.start) * 1000 for p in posts if not p.duplicate]
        dup = [(p.end - p.start) * 1000 for p in posts if p.duplicate]
        original_end = {p.index: p.end for p in posts if not p.duplicate}
        overlapped = sum(1 for p in posts if p.duplicate and p.start < original_end[p.index])
        statuses = Counter(p.status for p in posts + warm + replay)
        errors = [p.error for p in posts + warm + replay if p.error]
        replay_lat = [(p.end - p.start) * 1000 for p in replay]

        # ---- checks, after the run
        status_rows = cli_json(stack, "status", "--json")
        job_rows = cli_json(stack, "list", "jobs", "--json")
        per_blob = Counter(r["blob"] for r in status_rows)
        ledger_states = Counter(r["state"] for r in status_rows)
        ledger_jobs = Counter(r["job"] for r in status_rows)
        job_names = Counter(r["name"] for r in job_rows)
        job_states = Counter(r["status"] for r in job_rows)
        container = stack.env["AUTORETRAIN_INCOMING_CONTAINER"]
        expected_blobs = {f"{container}/{parse_blob_created(e).blob.name}" for e in events}
        one_record_each = set(per_blob) == expected_blobs and all(n == 1 for n in per_blob.values())
        # Each version in one job at most, and only in a job that exists: a job of its own with no
        # limit on jobs in flight (`training.jobs_in_flight: 0`), else a job of several, or waiting.
        one_job_each = (all(job in job_names for job in ledger_jobs if job)
                        and all(n == 1 for n in job_names.values())
                        and len(job_rows) <= total)

        lines = host_log(stack.log)
        by_key: dict[str, Counter[str]] = defaultdict(Counter)
        times: dict[str, dict[str, datetime]] = defaultdict(dict)
        ingest_ids = {e["id"] for e in events}
        for ts, event, fields in lines:
            wk = fields.get("work_key")
            if not wk or fields.get("event_id") not in ingest_ids:
                continue  # not an ingest line (completion logs `duplicate` too, under its own event)
            by_key[wk][event] += 1
            times[wk].setdefault(event, ts)
        sent = Counter(keys[p.index].value for p in posts + warm + replay)
        # A blob is accepted once: its first delivery leaves it waiting, or starts its job. A
        # redelivery is a duplicate, or (one job in flight) it starts the job of the versions waiting
        # then, itself among them: `submitted` again. Every delivery logs exactly one of the three.
        accepted_once = all(by_key[k.value]["ingest.waiting"] <= 1
                             and by_key[k.value]["ingest.submitted"] + by_key[k.value]["ingest.waiting"] >= 1
                             for k in keys)
        one_outcome_each = all(by_key[k.value]["duplicate"] + by_key[k.value]["ingest.submitted"]
                          + by_key[k.value]["ingest.waiting"] == sent[k.value] for k in keys)
        dup_lines = sum(c["duplicate"] for c in by_key.values())
        pushed = sum(max(c["ingest.submitted"] + c["ingest.waiting"] - 1, 0) for c in by_key.values())
        other = Counter(e for c in by_key.values() for e, n in c.items() for _ in range(n)
                        if e in ("ingest.quarantined", "ingest.skipped", "failed", "ledger.taken_over", "ignored"))

        # Where an ingest's time goes, from the host's own log lines (ms resolution), early vs late.
        ordered = sorted((k.value for k in keys[args.warmup:]), key=lambda wk: times[wk].get("ingest.claimed",
                                                                                           datetime.max))
        tenth = max(len(ordered) // 10, 1)
        phases: dict[str, tuple[float, float]] = {}
        for a, b in itertools.pairwise(PHASES):
            def gap(wks: list[str], a: str = a, b: str = b) -> float:
                values = [(times[w][b] - times[w][a]).total_seconds() * 1000 for w in wks
                          if a in times[w] and b in times[w]]
                return statistics.median(values) if values else float("nan")
            phases[f"{a.split('.')[1]} -> {b.split('.')[1]}"] = (gap(ordered[:tenth]), gap(ordered[-tenth:]))

        result = {
            "mode": mode, "blobs": args.blobs, "posts": len(posts), "duplicates": sum(p.duplicate for p in posts),
            "dups_queued_behind": sum(p.concurrent for p in posts), "dups_overlapping": overlapped,
            "concurrency": args.concurrency, "wall_s": wall, "posts_per_s": len(posts) / wall,
            "new_per_s": args.blobs / wall,
            "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "max_ms": max(lat),
            "new_p50_ms": pct(new, 0.5), "new_p99_ms": pct(new, 0.99),
            "dup_p50_ms": pct(dup, 0.5), "dup_p99_ms": pct(dup, 0.99),
            "http": dict(statuses), "client_errors": errors[:5],
            "ledger_records": len(status_rows), "ledger_states": dict(ledger_states),
            "one_record_per_blob": one_record_each, "jobs": len(job_rows), "job_states": dict(job_states),
            "one_job_per_blob": one_job_each, "accepted_once_each": accepted_once,
            "duplicates_logged": dup_lines, "every_delivery_logged_one_outcome": one_outcome_each,
            "redeliveries_that_started_a_job": pushed,
            "other_outcomes": dict(other), "phases_ms_first_vs_last_tenth": phases,
            "replay_posts": len(replay), "replay_per_s": len(replay) / replay_wall if replay else None,
            "replay_p50_ms": pct(replay_lat, 0.5), "replay_p99_ms": pct(replay_lat, 0.99),
            "cpu_s": cpu, "check_seconds": time.monotonic() - measured_at,
        }
        return result
    finally:
        stop_stack(stack)
        if not args.keep:
            shutil.rmtree(stack.home, ignore_errors=True)


def report(r: dict[str, Any]) -> None:
    ok = lambda v: "yes" if v else "NO"  # noqa: E731
    print(f"\n== jobs {r['mode']}: {r['blobs']} blobs, {r['posts']} posts ({r['duplicates']} duplicates: "
          f"{r['dups_queued_behind']} queued right behind the original, {r['dups_overlapping']} in flight "
          f"with it), {r['concurrency']} client threads")
    print(f"  wall {r['wall_s']:.2f} s: {r['posts_per_s']:.1f} posts/s ({r['new_per_s']:.1f} new blobs/s); "
          f"target >= 200 posts/s: {'met' if r['posts_per_s'] >= 200 else 'MISSED'}")
    print(f"  latency ms: all p50 {r['p50_ms']:.1f} p99 {r['p99_ms']:.1f} max {r['max_ms']:.1f}; "
          f"new p50 {r['new_p50_ms']:.1f} p99 {r['new_p99_ms']:.1f}; "
          f"duplicate p50 {r['dup_p50_ms']:.1f} p99 {r['dup_p99_ms']:.1f}")
    if r["replay_posts"]:
        print(f"  then every event again ({r['replay_posts']} posts, all duplicates): {r['replay_per_s']:.1f} posts/s, "
              f"p50 {r['replay_p50_ms']:.1f} ms, p99 {r['replay_p99_ms']:.1f} ms")
    cpu = r["cpu_s"]
    print(f"  CPU seconds during the posts (2 cores = {2 * r['wall_s']:.1f} s available): "
          + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
    print(f"  HTTP answers {r['http']}; client errors {r['client_errors'] or 'none'}")
    print(f"  ledger: {r['ledger_records']} records {r['ledger_states']}; one record per blob: "
          f"{ok(r['one_record_per_blob'])}")
    print(f"  jobs: {r['jobs']} {r['job_states']}; each version in one job at most: {ok(r['one_job_per_blob'])}")
    print(f"  host log: each blob accepted once (waiting, or its job started): {ok(r['accepted_once_each'])}; "
          f"every delivery logged one outcome: {ok(r['every_delivery_logged_one_outcome'])} "
          f"({r['duplicates_logged']} 'duplicate', {r['redeliveries_that_started_a_job']} redeliveries started the "
          f"job of the versions waiting); other outcomes {r['other_outcomes'] or 'none'}")
    print("  ingest phases, median ms (first tenth of ingests vs last tenth):")
    for name, (first, last) in r["phases_ms_first_vs_last_tenth"].items():
        print(f"    {name:<36} {first:8.1f} {last:8.1f}")


def storage_floor(dup_share: float) -> float:
    """The storage floor's CPU per post at this mix (bench/storage_floor.py, run now), in ms."""
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("storage_floor.py")),
                           "--dup-share", str(dup_share)], capture_output=True, text=True, check=True)
    found = re.search(r"= ([0-9.]+) ms of CPU", done.stdout)
    if found is None:
        raise SystemExit(f"storage_floor.py printed no floor:\n{done.stdout}{done.stderr}")
    print(f"\n[floor] {done.stdout.splitlines()[-2].strip()}")
    return float(found[1])


def report_floor(held: list[dict[str, Any]], floors: list[float]) -> None:
    """Each `hold` run's CPU per post (host + Azurite) against the floors measured right before and
    right after it (the machine's speed drifts: a floor from another hour is not a yardstick)."""
    ratios = []
    for n, r in enumerate(held):
        per_post = 1000 * (r["cpu_s"]["host"] + r["cpu_s"]["azurite"]) / r["posts"]
        floor = (floors[n] + floors[n + 1]) / 2
        ratios.append(per_post / floor)
        print(f"  run {n + 1}: host + Azurite {per_post:.2f} ms a post against the floor's {floors[n]:.2f} "
              f"(before) and {floors[n + 1]:.2f} ms (after): {ratios[-1]:.2f}x")
    median = statistics.median(ratios)
    print(f"ingest CPU per post against the storage floor, median of {len(ratios)}: {median:.2f}x "
          f"(target <= 1.5x: {'met' if median <= 1.5 else 'MISSED'})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blobs", type=int, default=700, help="new blobs in the measured run (default 700)")
    parser.add_argument("--dup-share", type=float, default=0.3,
                        help="share of all posts that redeliver an earlier event (default 0.3)")
    parser.add_argument("--concurrency", type=int, default=12, help="client threads (default 12)")
    parser.add_argument("--rows", type=int, default=15, help="rows per CSV file (default 15, ~1.2 KB)")
    parser.add_argument("--warmup", type=int, default=8, help="blobs ingested before the clock starts")
    parser.add_argument("--jobs", choices=("hold", "run", "both"), default="both",
                        help="hold: jobs stay queued; run: the real workspace runs them (default both)")
    parser.add_argument("--no-replay", dest="replay", action="store_false",
                        help="skip the second pass that posts every event once more (all duplicates)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the stack's home and the host logs")
    parser.add_argument("--profile", action="store_true",
                        help="hold mode: sample the host's ingest threads during the posts (implies --keep; "
                             "the profile is written to hold-profile.txt in the kept folder)")
    parser.add_argument("--floor", action="store_true",
                        help="measure the storage floor (storage_floor.py) before and after each run, and "
                             "print each hold run's CPU per post against the two")
    parser.add_argument("--repeat", type=int, default=1, help="measured runs (default 1)")
    parser.add_argument("--serve-held", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-held-worker", type=int, metavar="FD", help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, default=1,
                        help="the host's worker processes, FUNCTIONS_WORKER_PROCESS_COUNT (default 1)")
    args = parser.parse_args()
    if args.serve_held:
        return serve_held()
    if args.serve_held_worker is not None:
        return serve_held_worker(args.serve_held_worker)
    args.keep = args.keep or args.profile
    if not 0 <= args.dup_share < 1 or args.blobs < 1 or args.concurrency < 1 or args.repeat < 1:
        parser.error("--dup-share must be in [0, 1), --blobs, --concurrency and --repeat at least 1")
    if args.floor and args.jobs == "run":
        parser.error("--floor compares the hold runs (--jobs hold or both)")

    interrupt_on_signals()  # the finally blocks stop the stacks
    workdir = Path(tempfile.mkdtemp(prefix="autoretrain-ingest-bench-"))
    results = []
    try:
        floors = [storage_floor(args.dup_share)] if args.floor else []
        for _ in range(args.repeat):
            for mode in (("hold", "run") if args.jobs == "both" else (args.jobs,)):
                results.append(run_once(mode, args, workdir))
                report(results[-1])
            if args.floor:
                floors.append(storage_floor(args.dup_share))
        if args.floor:
            report_floor([r for r in results if r["mode"] == "hold"], floors)
    except KeyboardInterrupt:
        print("\ninterrupted: stacks stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"\nkept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
