"""Benchmark: the pipeline against the bare work it does, as ratios measured in one run.

For each size (rows of wine-shaped data under ml/contract.yaml; `--data noisy` or `repeated`):
  - bare job: what a data scientist writes in one file, importing nothing from this project
    (`BARE_JOB`): pandas.read_csv, a split by row hash, the same scikit-learn pipeline written out,
    fit and score; its whole process, interpreter start and imports included. The floor.
  - local job: the embedded workspace runs ml/pipeline.yml (prep -> train -> evaluate, each a
    subprocess in its code snapshot) on a training set of that one file, from submit to completed,
    plus the model registration that completion does.
  - prep's peak memory (max RSS of the prep step, read from the kernel) against the size of the
    data as a typed pandas DataFrame.

    .venv/bin/python bench/pipeline.py [--rows 10000 1000000] [--repeat 3] [--data noisy|repeated]

Numbers go to stdout; latest ones in bench/README.md. Not run by the tests.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "ml" / "src"))

from autoretrain import datacontract  # noqa: E402

sys.modules.setdefault("datacontract", datacontract)

from autoretrain.adapters.localworkspace.workspace import LocalWorkspace  # noqa: E402
from autoretrain.domain import JOB_TAG, BlobRef, JobState, TrainingMember, WorkKey  # noqa: E402

CONTRACT = ROOT / "ml" / "contract.yaml"


class FolderBlobs:
    """The BlobStore port on a local folder: the benchmark measures the pipeline, not Azurite."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def download_to(self, ref: BlobRef, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.folder / ref.name, path)


def write_rows(path: Path, rows: int) -> None:
    """`rows` wine-shaped rows: the wine data repeated, with a little noise on one column so rows differ."""
    sys.path.insert(0, str(ROOT / "ml" / "sample"))
    import wine

    base = wine.wine_frame()
    reps = -(-rows // len(base))
    frame = pd.concat([base] * reps, ignore_index=True).iloc[:rows]
    noise = np.random.default_rng(0).normal(0, 0.01, size=(rows, 1))
    frame["alcohol"] = (frame["alcohol"] + noise[:, 0]).round(3)
    frame.to_csv(path, index=False)


def write_noisy(path: Path, rows: int, seed: int = 0) -> None:
    """`rows` wine-shaped rows resampled from the wine data, each feature with 5% Gaussian noise (of
    its own value): every row differs, as real data does, so nothing compresses or caches well."""
    sys.path.insert(0, str(ROOT / "ml" / "sample"))
    import wine

    base = wine.wine_frame()
    rng = np.random.default_rng(seed)
    frame = base.iloc[rng.integers(0, len(base), size=rows)].reset_index(drop=True)
    for column in frame.columns:
        if column == "cultivar":
            continue
        noisy = frame[column].to_numpy(dtype="float64") * (1 + rng.normal(0, 0.05, size=rows))
        frame[column] = noisy.round(0).astype("int64") if frame[column].dtype.kind == "i" else noisy.round(4)
    frame.to_csv(path, index=False)


# What a data scientist writes in one file, importing nothing from this project: pandas.read_csv, a
# split by a hash of each row, the same scikit-learn pipeline as train.py's for the demo contract
# (median imputing and scaling of the 13 numeric features, logistic regression with max_iter 1000),
# fit, and the macro F1 on the held-out rows.
BARE_JOB = """
import sys, time
t0 = time.perf_counter()
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
frame = pd.read_csv(sys.argv[1])
target = "cultivar"
frame = frame[frame[target].notna()].reset_index(drop=True)
features = [c for c in frame.columns if c != target]
test = (pd.util.hash_pandas_object(frame, index=False).to_numpy() % 100) < 25
numbers = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
model = Pipeline([("prepare", ColumnTransformer([("numbers", numbers, features)])),
                  ("estimate", LogisticRegression(max_iter=1000, random_state=42))])
model.fit(frame.loc[~test, features], frame.loc[~test, target])
f1 = f1_score(frame.loc[test, target], model.predict(frame.loc[test, features]), average="macro")
print(time.perf_counter() - t0, f1)
"""


def bare_job(path: Path) -> float:
    """The bare job's whole-process wall time (interpreter start and imports included)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", BARE_JOB, str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bare job failed: {done.stderr.strip().splitlines()[-1]}")
    return time.perf_counter() - started


def local_job(home: Path, folder: Path, name: str, attempt: int) -> tuple[float, Mapping[str, float]]:
    workspace = LocalWorkspace(home, pipeline=ROOT / "ml" / "pipeline.yml", contract=CONTRACT,
                               blobs=FolderBlobs(folder))  # type: ignore[arg-type]
    workspace.pipeline()  # the one-time azure-ai-ml load is the host's start-up, not a job's cost
    time.sleep(10)  # ... and so is the warm step runners' start (the workspace starts them at once)
    key = WorkKey(f"{attempt:024x}")
    data = workspace.register_data(BlobRef("datasets", name, "0x1"), key, {})
    started = time.perf_counter()
    training_set = workspace.register_training_set(key, [TrainingMember(f"{data.name}:{data.version}", name)])
    job = workspace.submit(training_set, key, {JOB_TAG: key.value})
    status = workspace.wait(job.name, timeout=3600)
    assert status.state is JobState.COMPLETED, status
    workspace.register_model(job.name, key, workspace.job_metrics(job.name), {})
    elapsed = time.perf_counter() - started
    import sqlite3

    db = sqlite3.connect(home.resolve() / "workspace" / "catalog.sqlite")
    steps = dict(db.execute("SELECT step, seconds FROM steps WHERE job = ?", (job.name,)).fetchall())
    db.close()
    workspace.close()
    return elapsed, steps


def prep_memory(path: Path, out: Path) -> tuple[float, float]:
    """(prep's peak RSS in MB, read by GNU time from the kernel; the data as a typed DataFrame in MB)."""
    snapshot = out / "code"
    shutil.copytree(ROOT / "ml" / "src", snapshot, dirs_exist_ok=True)
    shutil.copy2(ROOT / "autoretrain" / "datacontract.py", snapshot / "datacontract.py")
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%M", sys.executable, "prep.py", "--data", str(path), "--contract", str(CONTRACT),
         "--train_data", str(out / "train"), "--test_data", str(out / "test"), "--report", str(out / "report")],
        cwd=snapshot, check=True, capture_output=True, text=True,
    )
    peak_kb = int(done.stderr.strip().splitlines()[-1])
    spec = datacontract.read_contract(CONTRACT)
    dtypes = {c: ("float64" if k != "category" else object) for c, k in spec.features.items()}
    typed = pd.read_csv(path, dtype={**dtypes, spec.target: object})
    return peak_kb / 1024, typed.memory_usage(deep=True).sum() / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", choices=("noisy", "repeated"), default="noisy",
                        help="noisy: resampled wine rows with 5%% noise on every feature; repeated: the wine "
                             "data repeated with noise on one column")
    args = parser.parse_args()
    for rows in args.rows:
        with tempfile.TemporaryDirectory(prefix="autoretrain-bench-") as tmp:
            folder = Path(tmp)
            name = f"rows-{rows}.csv"
            (write_noisy if args.data == "noisy" else write_rows)(folder / name, rows)
            size = (folder / name).stat().st_size / 1e6
            bare = [bare_job(folder / name) for _ in range(args.repeat)]
            local = [local_job(folder / "home", folder, name, i + 1) for i in range(args.repeat)]
            peak, frame_mb = prep_memory(folder / name, folder / "prep")
            bare_s, local_s = statistics.median(bare), statistics.median(t for t, _ in local)
            steps = {s: statistics.median(r[1][s] for r in local) for s in local[0][1]}
            print(f"{rows:>9,} {args.data} rows ({size:.1f} MB CSV): bare job {bare_s:.2f} s, "
                  f"local job {local_s:.2f} s -> {local_s / bare_s:.2f}x (median of {args.repeat})")
            print("           steps: " + ", ".join(f"{s} {v:.2f} s" for s, v in steps.items()))
            print(f"           prep peak RSS {peak:.0f} MB vs the typed DataFrame {frame_mb:.0f} MB "
                  f"-> {peak / frame_mb:.1f}x")


if __name__ == "__main__":
    main()
