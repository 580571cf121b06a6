"""The data contract as the pipeline steps see it, and the plumbing every step script shares.

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
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
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
    "TASKS",
    "Contract",
    "DataError",
    "InputError",
    "load_contract",
    "log_to_mlflow",
    "read_split",
    "run_step",
]

# The file name inside every uri_folder data output (train_data, test_data).
DATA_FILE = "data.csv"

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


def read_split(folder: Path, contract: Contract) -> tuple[pd.DataFrame, pd.Series]:
    """Features and target of a split that prep wrote, typed as the contract declares.

    Numbers are float (an int column may have gaps, which float holds as NaN); categories are
    Python strings with NaN for a gap: the model's imputer sees NaN as missing, but not None.
    """
    path = folder / DATA_FILE
    if not path.is_file():
        raise InputError(f"{path}: missing; pass the folder that the prep step wrote.")
    numeric = {c: "float64" for c, kind in contract.features.items() if kind != "category"}
    textual = {c: object for c, kind in contract.features.items() if kind == "category"}
    target_type: Any = object if contract.task == "classification" else "float64"
    frame = pd.read_csv(
        path, dtype={**numeric, **textual, contract.target: target_type}, keep_default_na=False,
        na_values={c: [""] for c in contract.columns},
    )
    missing = [c for c in contract.columns if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; rerun prep.")
    return frame[list(contract.features)], frame[contract.target]


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
