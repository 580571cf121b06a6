"""The local workspace's catalogue: `workspace/catalog.sqlite`, the record of what it holds.

    data_versions   each blob version registered as a data version, and its file under data/
    training_sets   each training set: its member data versions and their MLTable under data/
    jobs            each pipeline job, its inputs, its state (queued, running, completed, failed)
                    and its runner: the process running it (pid and start time), none once stopped
    steps           each step of each job: state, exit code and seconds
    models          each registered model version (copied under models/), its metrics, the champion

One connection pool per workspace, WAL mode, one writer at a time in this process (`BEGIN
IMMEDIATE` for other processes). A version number is chosen in the transaction that writes its
files, so two registrations of one key make one version. `catalog_rows` lists the catalogue for
`autoretrain list` without a workspace.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import psutil

from autoretrain.datacontract import mltable_text
from autoretrain.domain import DataVersion, JobState, Metrics, ModelVersion, TrainingMember, WorkKey
from autoretrain.domain.errors import WorkspaceError

__all__ = ["Catalog", "catalog_rows", "local_file_name", "now", "runner_alive", "this_runner"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS data_versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, work_key TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL, source TEXT NOT NULL, lineage TEXT NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY, experiment TEXT NOT NULL, work_key TEXT NOT NULL,
    data TEXT NOT NULL, data_path TEXT NOT NULL, tags TEXT NOT NULL, status TEXT NOT NULL,
    failed_step TEXT, error TEXT, created TEXT NOT NULL, started TEXT, ended TEXT, champion TEXT,
    train_last INTEGER NOT NULL DEFAULT 0, runner TEXT, new_files INTEGER NOT NULL DEFAULT 1,
    mode TEXT NOT NULL DEFAULT 'train');
CREATE TABLE IF NOT EXISTS steps (
    job TEXT NOT NULL, step TEXT NOT NULL, status TEXT NOT NULL, started TEXT NOT NULL, ended TEXT,
    seconds REAL, exit_code INTEGER, PRIMARY KEY (job, step));
CREATE TABLE IF NOT EXISTS training_sets (
    name TEXT NOT NULL, version INTEGER NOT NULL, work_key TEXT NOT NULL UNIQUE, path TEXT NOT NULL,
    members TEXT NOT NULL, created TEXT NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS models (
    name TEXT NOT NULL, version INTEGER NOT NULL, work_key TEXT NOT NULL UNIQUE, job TEXT NOT NULL,
    path TEXT NOT NULL, tags TEXT NOT NULL, properties TEXT NOT NULL, metrics TEXT NOT NULL,
    champion INTEGER NOT NULL DEFAULT 0, created TEXT NOT NULL,
    PRIMARY KEY (name, version));
"""
# A data version's local file as a step names it in an error: its work key, maybe an extension.
_LOCAL_FILE = re.compile(r"(?<![\w/-])([0-9a-f]{24})(?:[.][a-z0-9]{1,8})?(?=:)")


def now() -> str:
    return datetime.now(UTC).isoformat()


def this_runner() -> str:
    """This process as a job's runner: its pid and start time (a pid alone may be reused)."""
    return f"{os.getpid()}:{psutil.Process().create_time():.2f}"


def runner_alive(runner: str) -> bool:
    """Whether the process a job's runner names still runs (the same pid, started at the same time)."""
    pid, _, started = runner.partition(":")
    try:
        return f"{psutil.Process(int(pid)).create_time():.2f}" == started
    except (ValueError, psutil.Error):
        return False


def local_file_name(key: WorkKey, blob_name: str) -> str:
    """A data version's local file name: from the work key, never from the (untrusted, maybe very
    long) blob name; only a short, plain extension is kept."""
    suffix = PurePosixPath(blob_name.replace("\\", "/")).suffix.lower()
    return f"{key.value}{suffix if re.fullmatch(r'[.][a-z0-9]{1,8}', suffix) else ''}"


class Catalog:
    """The catalogue of the workspace at `root`: its SQLite rows and the version folders they name."""

    def __init__(self, root: Path, *, data_asset: str, model_name: str) -> None:
        self.root = root
        self.path = root / "catalog.sqlite"
        self._data_asset = data_asset
        self._model_name = model_name
        self._write_lock = threading.Lock()
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()  # see connect
        self._closed = False
        with self.connect() as db:
            db.executescript(_SCHEMA)
            columns = {r["name"] for r in db.execute("PRAGMA table_info(jobs)")}
            # A catalogue made before these were pipeline inputs.
            if "champion" not in columns:
                db.execute("ALTER TABLE jobs ADD COLUMN champion TEXT")
            if "train_last" not in columns:
                db.execute("ALTER TABLE jobs ADD COLUMN train_last INTEGER NOT NULL DEFAULT 0")
            if "new_files" not in columns:
                db.execute("ALTER TABLE jobs ADD COLUMN new_files INTEGER NOT NULL DEFAULT 1")
            if "mode" not in columns:
                db.execute("ALTER TABLE jobs ADD COLUMN mode TEXT NOT NULL DEFAULT 'train'")
            if "runner" not in columns:  # made before jobs had runners: none, so the next resume takes them
                db.execute("ALTER TABLE jobs ADD COLUMN runner TEXT")

    # -- connections ---------------------------------------------------------------------------

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A catalogue connection of this workspace's pool (one is opened when none is idle): opening
        one per call cost more than the queries on the ingest path."""
        try:
            db = self._idle.get_nowait()
        except queue.Empty:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            # In WAL mode, NORMAL syncs at checkpoints, not at each commit: a commit survives a
            # crash of any process, and only a power cut may take back the last ones (as with
            # Azurite, which saves to disk every few seconds). FULL cost an fsync per ingest.
            db.execute("PRAGMA synchronous=NORMAL")
        try:
            yield db
        finally:
            if db.in_transaction or self._closed:
                db.close()  # a transaction left open (a failed ROLLBACK) stays with no one
            else:
                self._idle.put(db)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        # One writer at a time in this process; BEGIN IMMEDIATE guards against other processes.
        with self._write_lock, self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _one(self, sql: str, *args: object) -> sqlite3.Row | None:
        with self.connect() as db:
            row: sqlite3.Row | None = db.execute(sql, args).fetchone()
        return row

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                break

    # -- data ----------------------------------------------------------------------------------

    def data_by_key(self, key: WorkKey) -> DataVersion | None:
        row = self._one("SELECT * FROM data_versions WHERE work_key = ?", key.value)
        return _data(row) if row else None

    def add_data(
        self, key: WorkKey, source: str, lineage: Mapping[str, str], staging: Path, content: bytes | None = None
    ) -> DataVersion:
        """The data version of `key`: the file at `staging` moved into a new version's folder (or
        `content` written there, under `staging`'s name), or, when another delivery registered the
        key first, that one."""
        with self.transaction() as db:
            row = db.execute("SELECT * FROM data_versions WHERE work_key = ?", (key.value,)).fetchone()
            if row is None:
                version = db.execute(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM data_versions WHERE name = ?", (self._data_asset,)
                ).fetchone()[0]
                final = self.root / "data" / self._data_asset / str(version) / staging.name
                final.parent.mkdir(parents=True, exist_ok=True)
                if content is None:
                    staging.replace(final)
                else:
                    final.write_bytes(content)
                db.execute(
                    "INSERT INTO data_versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (self._data_asset, version, key.value, str(final), source, json.dumps(dict(lineage)), now()),
                )
                row = db.execute("SELECT * FROM data_versions WHERE work_key = ?", (key.value,)).fetchone()
        return _data(row)

    def register_training_set(self, key: WorkKey, members: Sequence[TrainingMember]) -> DataVersion:
        # The local catalogue holds its own copy of each version (a local read, not a service call).
        versions = [member.data_version for member in members]
        row = self._one("SELECT * FROM training_sets WHERE work_key = ?", key.value)
        if row is not None:
            return _data(row)
        # The members' files in one read, before the write lock: other ingests do not wait on it.
        paths = self._member_paths(versions)
        unknown = [m for m in versions if m not in paths]
        if unknown:
            raise WorkspaceError(f"data version(s) {', '.join(unknown)} are not registered in {self.path}.")
        name = f"{self._data_asset}-trainset"
        with self.transaction() as db:
            row = db.execute("SELECT * FROM training_sets WHERE work_key = ?", (key.value,)).fetchone()
            if row is None:
                version = db.execute(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM training_sets WHERE name = ?", (name,)
                ).fetchone()[0]
                folder = self.root / "data" / name / str(version)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "MLTable").write_text(mltable_text(str(paths[m]) for m in versions), encoding="utf-8")
                db.execute(
                    "INSERT INTO training_sets VALUES (?, ?, ?, ?, ?, ?)",
                    (name, version, key.value, str(folder), json.dumps(versions), now()),
                )
                row = db.execute("SELECT * FROM training_sets WHERE work_key = ?", (key.value,)).fetchone()
        return _data(row)

    def _member_paths(self, versions: Sequence[str]) -> dict[str, Path]:
        named = (m.rpartition(":") for m in versions)
        wanted = [int(v) for n, _, v in named if n == self._data_asset and v.isdigit()]
        with self.connect() as db:
            return {
                f"{r['name']}:{r['version']}": Path(r["path"])
                for r in db.execute(
                    "SELECT name, version, path FROM data_versions WHERE name = ?"
                    " AND version IN (SELECT value FROM json_each(?))", (self._data_asset, json.dumps(wanted)),
                )
            }

    def training_set_members(self, training_set: str) -> tuple[str, ...]:
        name, _, version = training_set.rpartition(":")
        row = self._one("SELECT members FROM training_sets WHERE name = ? AND version = ?", name, int(version or 0))
        if row is None:
            raise WorkspaceError(f"training set {training_set} is not registered in {self.path}.")
        return tuple(json.loads(row["members"]))

    def data_path(self, data: DataVersion) -> Path:
        row = self._one(
            "SELECT path FROM data_versions WHERE name = ? AND version = ?"
            " UNION ALL SELECT path FROM training_sets WHERE name = ? AND version = ?",
            data.name, int(data.version), data.name, int(data.version),
        )
        if row is None:
            raise WorkspaceError(f"data version {data.name}:{data.version} is not registered in {self.path}.")
        return Path(row["path"])

    def data_version_of(self, work_key: str, blob: str | None, etag: str | None) -> str:
        """The data version ("name:version") of a job's blob version; "" if none. A retrain has a
        work key of its own: its blob version's data version is found by blob and eTag."""
        found = self._one(
            "SELECT name, version FROM data_versions WHERE work_key = ? OR (json_extract(lineage, '$.blob') = ?"
            " AND json_extract(lineage, '$.etag') = ?) ORDER BY work_key = ? DESC, version LIMIT 1",
            work_key, blob, etag, work_key,
        )
        return f"{found['name']}:{found['version']}" if found else ""

    def blob_names(self, error: str) -> str:
        """A step names the data file it read, and here that is our own file (`<work key>.csv`); say
        which customer blob it is, as on Azure ML, where the file keeps the blob's name."""

        def blob(match: re.Match[str]) -> str:
            row = self._one("SELECT lineage FROM data_versions WHERE work_key = ?", match[1])
            return str(json.loads(row["lineage"]).get("blob", match[0])) if row else match[0]

        return _LOCAL_FILE.sub(blob, error)

    # -- jobs ----------------------------------------------------------------------------------

    def add_job(
        self, name: str, *, experiment: str, work_key: str, data: str, data_path: Path, tags: Mapping[str, str],
        champion: str | None, train_last: int, runner: str, new_files: int = 1, mode: str = "train",
    ) -> bool:
        """Queue the job, run by `runner`; False when it exists already (its first submission stands)."""
        with self.transaction() as db:
            inserted: int = db.execute(
                "INSERT OR IGNORE INTO jobs (name, experiment, work_key, data, data_path, tags, status, created,"
                " champion, train_last, runner, new_files, mode) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, experiment, work_key, data, str(data_path), json.dumps(dict(tags)), JobState.QUEUED.value,
                 now(), champion, train_last, runner, new_files, mode),
            ).rowcount
        return inserted > 0

    def take_job(self, job: str, runner: str, *, was: str | None) -> bool:
        """Make `runner` the job's runner if it is still queued or running under `was`; False if another
        process changed it first (it took the job over, or the job ended)."""
        with self.transaction() as db:
            taken: int = db.execute(
                "UPDATE jobs SET runner = ? WHERE name = ? AND runner IS ? AND status IN (?, ?)",
                (runner, job, was, JobState.QUEUED.value, JobState.RUNNING.value),
            ).rowcount
        return taken > 0

    def release_jobs(self, runner: str) -> None:
        """The unfinished jobs of `runner` (stopping) have no runner now: the next resume takes them."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET runner = NULL WHERE runner = ? AND status IN (?, ?)",
                       (runner, JobState.QUEUED.value, JobState.RUNNING.value))

    def job(self, job: str) -> sqlite3.Row | None:
        return self._one("SELECT * FROM jobs WHERE name = ?", job)

    def jobs(self, *states: JobState) -> list[sqlite3.Row]:
        """Every job (in states `states`, if given), oldest first."""
        where = f" WHERE status IN ({', '.join('?' for _ in states)})" if states else ""
        with self.connect() as db:
            return db.execute(f"SELECT * FROM jobs{where} ORDER BY created", [s.value for s in states]).fetchall()

    def set_job(self, job: str, state: JobState, **fields: str | None) -> None:
        columns = {"status": state.value, **fields}
        assignments = ", ".join(f"{c} = ?" for c in columns)
        with self.transaction() as db:
            db.execute(f"UPDATE jobs SET {assignments} WHERE name = ?", (*columns.values(), job))

    def step_started(self, job: str, step: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO steps (job, step, status, started) VALUES (?, ?, ?, ?)",
                (job, step, JobState.RUNNING.value, now()),
            )

    def step_ended(self, job: str, step: str, code: int, seconds: float) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE steps SET status = ?, ended = ?, seconds = ?, exit_code = ? WHERE job = ? AND step = ?",
                ((JobState.COMPLETED if code == 0 else JobState.FAILED).value, now(), seconds, code, job, step),
            )

    # -- models --------------------------------------------------------------------------------

    def model_where(self, clause: str, *args: object) -> ModelVersion | None:
        row = self._one(f"SELECT * FROM models WHERE name = ? AND {clause}", self._model_name, *args)
        return _model(row) if row else None

    def model_path(self, model: ModelVersion) -> str:
        row = self._one("SELECT path FROM models WHERE name = ? AND version = ?", model.name, int(model.version))
        if row is None:
            raise WorkspaceError(f"model {model.name}:{model.version} is not registered in {self.path}.")
        return str(row["path"])

    def add_model(
        self, job: str, key: WorkKey, source: Path, metrics: Metrics, lineage: Mapping[str, str]
    ) -> ModelVersion:
        """The model version of `key`: a copy of `source` as a new version, or the one registered first."""
        with self.transaction() as db:
            row = db.execute("SELECT version FROM models WHERE work_key = ?", (key.value,)).fetchone()
            if row is None:
                version = db.execute(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM models WHERE name = ?", (self._model_name,)
                ).fetchone()[0]
                target = self.root / "models" / self._model_name / str(version)
                if target.exists():
                    shutil.rmtree(target)
                shutil.copytree(source, target)
                db.execute(
                    "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                    (self._model_name, version, key.value, job, str(target), json.dumps(metrics.as_tags()),
                     json.dumps(dict(lineage)), metrics.to_json(), now()),
                )
        model = self.model_where("work_key = ?", key.value)
        assert model is not None
        return model

    def tag_model(self, model: ModelVersion, key: str, value: str) -> None:
        with self.transaction() as db:
            row = db.execute(
                "SELECT tags FROM models WHERE name = ? AND version = ?", (model.name, int(model.version))
            ).fetchone()
            if row is None:
                raise WorkspaceError(f"model {model.name}:{model.version} is not registered in {self.path}.")
            tags = {**json.loads(row["tags"]), key: value}
            db.execute("UPDATE models SET tags = ? WHERE name = ? AND version = ?",
                       (json.dumps(tags), model.name, int(model.version)))

    def promote(self, model: ModelVersion, *, replacing: ModelVersion | None) -> ModelVersion | None:
        with self.transaction() as db:
            # Compare and swap, in one transaction: two completions racing cannot both win.
            row = db.execute("SELECT version FROM models WHERE name = ? AND champion = 1", (model.name,)).fetchone()
            current = str(row["version"]) if row else None
            if current != (replacing.version if replacing else None):
                return None
            db.execute("UPDATE models SET champion = 0 WHERE name = ? AND champion = 1", (model.name,))
            db.execute(
                "UPDATE models SET champion = 1 WHERE name = ? AND version = ?", (model.name, int(model.version))
            )
        promoted = self.model_where("version = ?", int(model.version))
        assert promoted is not None
        return promoted


def _data(row: sqlite3.Row) -> DataVersion:
    return DataVersion(name=row["name"], version=str(row["version"]), uri=Path(row["path"]).as_uri())


def _model(row: sqlite3.Row) -> ModelVersion:
    return ModelVersion(
        name=row["name"], version=str(row["version"]), job=row["job"],
        metrics=Metrics.from_json(row["metrics"]), properties=json.loads(row["properties"]),
        champion=bool(row["champion"]),
    )


_LISTINGS = {
    "data": "SELECT name, version, source, path, created FROM data_versions ORDER BY name, version",
    "trainsets": "SELECT name, version, members, path, created FROM training_sets ORDER BY name, version",
    "jobs": "SELECT name, experiment, data, new_files, mode, status, failed_step, error, created, started, ended"
    " FROM jobs ORDER BY created",
    "models": "SELECT name, version, job, metrics, champion, tags, properties, created FROM models"
    " ORDER BY name, version",
    "steps": "SELECT job, step, status, seconds, exit_code, started, ended FROM steps ORDER BY started",
}
_JSON_COLUMNS = ("properties", "members", "tags")


def catalog_rows(home: Path, kind: str) -> list[dict[str, Any]]:
    """The catalogue's data versions, jobs or models as plain rows (`autoretrain list`)."""
    if kind not in _LISTINGS:
        raise WorkspaceError(f"cannot list {kind!r}; choose one of {', '.join(_LISTINGS)}.")
    path = Path(home).resolve() / "workspace" / "catalog.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in db.execute(_LISTINGS[kind])]
    finally:
        db.close()
    for row in rows:
        if "metrics" in row:
            row["metrics"] = json.loads(row["metrics"])["values"]
        for column in _JSON_COLUMNS:
            if column in row:
                row[column] = json.loads(row[column])
        if "champion" in row:
            row["champion"] = bool(row["champion"])
    return rows
