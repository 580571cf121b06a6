"""The data contract as the pipeline steps see it, and the plumbing every step script shares
(reading a training set's files where they are, logging to MLflow, running a step).

The contract's rules are in `datacontract`, the one module the function app shares with the steps:
every component lists it under `additional_includes`, so Azure ML (and the local workspace) copies
it into the step's code snapshot. This module maps its neutral error to `InputError`.

Errors: `InputError` (bad contract, bad argument) is a failure a step reports as a one-line
message, exit code 2. `DataError`, its subclass, is the new data file's own fault (a bad value, a
ragged row, another encoding): one line too, and exit code `DATA_ERROR_EXIT` (65), by which the
loop tells it from our faults and quarantines the file. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
from datacontract import (
    DATA_ERROR_EXIT,
    ESTIMATORS,
    FEATURE_TYPES,
    METRICS,
    MISSING,
    TASKS,
    Contract,
    ContractRuleError,
    read_contract,
)

# Strings stored as Python objects, whether or not pyarrow is installed (pandas 3 picks pyarrow when
# it is, and Azure ML's step environment has it through mltable): the same values and dtypes in every
# environment, and on 1M rows prep peaks at 360 MB instead of 490 MB with pyarrow's strings.
pd.set_option("mode.string_storage", "python")

__all__ = [
    "DATA_FILE",
    "ESTIMATORS",
    "FEATURE_TYPES",
    "METRICS",
    "MISSING",
    "MODES",
    "TASKS",
    "Contract",
    "DataError",
    "InputError",
    "load_contract",
    "local_files",
    "log_to_mlflow",
    "read_split",
    "run_step",
    "split_schema",
]

# The file name inside every uri_folder data output (train_data, test_data): Parquet, typed by the
# contract (`split_schema`), so train and evaluate read numbers without parsing text.
DATA_FILE = "data.parquet"

# A declared type as a split stores it: an int column is int64 whatever its gaps (Parquet keeps nulls).
_ARROW_TYPES = {"float": pa.float64(), "int": pa.int64(), "category": pa.string()}

# What a pipeline job does (its `mode` input): train a challenger and score it with the champion, or
# only score the champion on the new data (the contract's `retrain_when: champion_slips`).
MODES = ("train", "score")

_log = logging.getLogger(__name__)


class InputError(Exception):
    """Bad input to a step (contract, data file or argument); the message is one actionable line."""


class DataError(InputError):
    """The new data file breaks the contract: its fault, not ours. The message names the file,
    the line (and byte offset where it helps) and the fix; `line` and `byte` say where, when known."""

    def __init__(self, message: str, *, line: int | None = None, byte: int | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.byte = byte

    def as_report(self) -> dict[str, object]:
        """The `rejected` entry of prep's report: what the loop quarantines the file with."""
        return {"reason": str(self), "line": self.line, "byte": self.byte}


def load_contract(path: Path) -> Contract:
    """Read and check a contract file; InputError names the file, the key and the fix."""
    try:
        return read_contract(path)
    except ContractRuleError as exc:
        raise InputError(str(exc)) from None


def split_schema(contract: Contract) -> pa.Schema:
    """The columns of a split prep writes, in the contract's order (features, then the target), each
    typed as declared: float -> float64, int -> int64, category -> string; the target is a string to
    a classifier and float64 to a regressor. A gap is a null in any of them."""
    return pa.schema([(column, _ARROW_TYPES[kind]) for column, kind in contract.kinds.items()])


def read_split(folder: Path, contract: Contract) -> tuple[pd.DataFrame, pd.Series]:
    """Features and target of a split that prep wrote, typed as the contract declares.

    Numbers are float (an int column may have gaps, which float holds as NaN); categories are
    Python strings with NaN for a gap: the model's imputer sees NaN as missing, but not None.
    """
    path = folder / DATA_FILE
    if not path.is_file():
        raise InputError(f"{path}: missing; pass the folder that the prep step wrote.")
    # Text read as dictionary-encoded (as it is stored): one Python string per distinct value, not per
    # row, which is the CSV reader's memory, and what classes and encoders compare fast.
    textual = [c for c, kind in contract.kinds.items() if kind == "category"]
    try:
        frame = pd.read_parquet(path, engine="pyarrow", read_dictionary=textual)
    except (OSError, ValueError, pa.ArrowException) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"{path}: not a split that prep wrote ({reason}); rerun prep.") from None
    missing = [c for c in contract.columns if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; rerun prep.")
    for column, kind in contract.kinds.items():
        frame[column] = _model_facing(frame[column], kind)
    return frame[list(contract.features)], frame[contract.target]


def _model_facing(values: pd.Series, kind: str) -> pd.Series:
    """A stored column as the model sees it: numbers as float64 (an int's gap, a null, as NaN), text
    (a pandas Categorical) as Python strings in an object column with NaN for a gap."""
    if kind != "category":
        return values.astype("float64")
    text = values.astype(object)
    return text.where(text.notna(), np.nan)


def log_to_mlflow(params: Mapping[str, object], metrics: Mapping[str, float]) -> bool:
    """Log a step's parameters and metrics to its MLflow run, in one batch, where tracking is set.

    The step never chooses where: Azure ML sets MLFLOW_TRACKING_URI and MLFLOW_RUN_ID for every
    job (the workspace's tracking, shown in Studio), and the local workspace sets the same two for
    each step (its local store, one child run per step). Without MLFLOW_TRACKING_URI nothing is
    logged. A failure is logged, not raised: the step's output files are the record. True when
    logged.
    """
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return False
    import mlflow  # deferred: a step without tracking does not pay for it
    from mlflow.entities import Metric, Param

    try:
        # The run MLFLOW_RUN_ID names (else the active one, or a new one): whoever started the
        # step's run (Azure ML, the local workspace) ends it with the step's outcome.
        run_id = os.environ.get("MLFLOW_RUN_ID") or (mlflow.active_run() or mlflow.start_run()).info.run_id
        now = int(time.time() * 1000)
        mlflow.MlflowClient().log_batch(
            run_id,
            metrics=[Metric(name, float(value), now, 0) for name, value in metrics.items()],
            params=[Param(name, str(value)) for name, value in params.items()],
        )
    except Exception as exc:  # any tracking failure, whatever the tracking backend raises
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _log.warning("mlflow_log_failed error=%s", reason)
        return False
    _log.info("mlflow_logged uri=%s run=%s params=%d metrics=%d", mlflow.get_tracking_uri(), run_id, len(params),
              len(metrics))
    return True


# ---- a training set's files, wherever they are -------------------------------------------------


def local_files(files: Sequence[str]) -> list[Path]:
    """The files a training set's MLTable names (`datacontract.mltable_files`), as local paths, in
    order. On Azure ML it names URIs (azureml://...), locally paths: a scheme is remote, and a remote
    set is copied (`_fetch_remote`) once per process, for both of prep's readers (data versions never
    change), to a temporary folder removed when the step ends."""
    if not any("://" in f for f in files):
        return [Path(f) for f in files]
    key = tuple(files)
    if key not in _COPIES:
        folder = Path(tempfile.mkdtemp(prefix="prep-remote-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _COPIES[key] = _fetch_remote(files, folder)
    return _COPIES[key]


_COPIES: dict[tuple[str, ...], list[Path]] = {}


_WORKSPACE_VARIABLES = ("AZUREML_ARM_SUBSCRIPTION", "AZUREML_ARM_RESOURCEGROUP", "AZUREML_ARM_WORKSPACE_NAME")


def _long_form(uri: str) -> str:
    """`mltable` takes a datastore URI in its long form only (it reads `azureml://datastores/...` as a
    local path): the job's workspace, which Azure ML sets in the step's environment, completes it."""
    prefix = "azureml://datastores/"
    if not uri.startswith(prefix):
        return uri
    workspace = [os.environ.get(name, "") for name in _WORKSPACE_VARIABLES]
    if not all(workspace):
        raise InputError(f"{uri}: a datastore URI is read in an Azure ML job; {', '.join(_WORKSPACE_VARIABLES)} "
                         "name its workspace and are not all set here.")
    subscription, group, name = workspace
    return (f"azureml://subscriptions/{subscription}/resourcegroups/{group}/workspaces/{name}/datastores/"
            f"{uri[len(prefix):]}")


def _fetch_remote(files: Sequence[str], folder: Path) -> list[Path]:
    """Copy each file the URIs name, byte for byte, to `folder`/<position>/<its base name>, with the
    `mltable` package (in the step's environment; it reads datastore URIs with the job's identity).
    prep then reads the copies with the very code that reads local files: rows, errors, file names
    and line numbers are the same on Azure ML as locally. A file that cannot be copied is an
    InputError (nothing is known about its content), as a local file that cannot be opened is."""
    import mltable  # here only: local runs never load it

    copies = []
    for position, uri in enumerate(files):
        target = folder / str(position)
        staging = folder / f"{position}.download"
        source = _long_form(uri)
        try:
            # MLTable._download copies the raw streams (no parsing) and returns where each landed,
            # under the source's own path; the package has no public call that does this.
            fetched = mltable.from_paths([{"file": source}])._download(target_path=str(staging))
        except Exception as exc:  # the package's errors (not found, no access, ...) share no base class
            raise InputError(f"{uri}: cannot copy the data file ({' '.join(str(exc).split())}).") from None
        if len(fetched) != 1:
            raise InputError(f"{uri}: names {len(fetched)} files, not one; list each data file in the MLTable.")
        target.mkdir()
        copy = target / (PurePosixPath(urlsplit(uri).path).name or Path(fetched[0]).name)
        Path(fetched[0]).replace(copy)
        shutil.rmtree(staging)
        copies.append(copy)
    return copies


def run_step(
    main: Callable[..., object],
    parse_args: Callable[[Sequence[str] | None], argparse.Namespace],
    argv: Sequence[str] | None = None,
) -> int:
    """Run a step script: logs to stdout, an InputError as one line on stderr and exit code 2
    (a DataError: exit code DATA_ERROR_EXIT).

    Logs go to stdout so that stderr holds only the reason of a failure, which the local
    workspace and Azure ML both show as the step's error.
    """
    logging.basicConfig(
        stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    args = parse_args(argv)
    try:
        main(**vars(args))
    except InputError as exc:
        sys.stderr.write(f"{exc}\n")
        return DATA_ERROR_EXIT if isinstance(exc, DataError) else 2
    return 0
