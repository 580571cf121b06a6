"""The data contract as the pipeline steps see it, and the plumbing every step script shares.

The contract is the YAML file passed as the `contract` input (`ml/contract.yaml` by default):

    target: cultivar
    task: classification        # classification | regression
    primary_metric: f1_macro    # one of METRICS[task]
    features: {alcohol: float, magnesium: int, region: category}
    max_bytes: 536870912        # optional; read by ingest, ignored here

This module is uploaded to Azure ML with the scripts (`code: ../src`), so it imports only the
standard library and PyYAML: it cannot use the `autoretrain` package, which is not there. Its
checks match `autoretrain.contract` so that a contract ingest accepts is one the pipeline accepts.

Errors: `InputError` (bad contract, bad data, bad argument) is the only failure a step reports
as a one-line message; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd
import yaml

__all__ = [
    "DATA_FILE",
    "FEATURE_TYPES",
    "METRICS",
    "MISSING",
    "TASKS",
    "Contract",
    "InputError",
    "load_contract",
    "read_split",
    "run_step",
]

FEATURE_TYPES = ("float", "int", "category")
TASKS = ("classification", "regression")
# Metric name -> greater_is_better, per task; evaluate writes exactly these.
METRICS: Mapping[str, Mapping[str, bool]] = MappingProxyType(
    {
        "classification": MappingProxyType(
            {"accuracy": True, "f1_macro": True, "precision_macro": True, "recall_macro": True}
        ),
        "regression": MappingProxyType({"r2": True, "rmse": False, "mae": False}),
    }
)
# Cell values read as "no value", compared lower-cased after stripping (same set as ingest).
MISSING = frozenset({"", "na", "nan", "null", "none"})
# The file name inside every uri_folder data output (train_data, test_data).
DATA_FILE = "data.csv"

_log = logging.getLogger(__name__)


class InputError(Exception):
    """Bad input to a step (contract, data file or argument); the message is one actionable line."""


@dataclass(frozen=True, slots=True)
class Contract:
    """A validated contract; `features` keeps the file's column order."""

    target: str
    task: str
    primary_metric: str
    features: Mapping[str, str]
    source: str = "contract.yaml"

    @property
    def columns(self) -> tuple[str, ...]:
        """Every declared column, features first, then the target."""
        return (*self.features, self.target)

    @property
    def greater_is_better(self) -> bool:
        """Whether a higher primary metric is a better model (false for error metrics)."""
        return METRICS[self.task][self.primary_metric]

    def columns_of(self, kind: str) -> list[str]:
        """Feature names declared with type `kind`, in contract order."""
        return [name for name, declared in self.features.items() if declared == kind]


def load_contract(path: Path) -> Contract:
    """Read and validate a contract file; InputError names the file, the key and the fix."""
    where = path.name
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read the contract ({exc.strerror}).") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{where}: not valid YAML ({str(exc).splitlines()[0]}).") from None
    if not isinstance(raw, Mapping):
        raise InputError(f"{where}: expected a mapping with target, task, primary_metric and features.")
    for key in ("target", "task", "primary_metric", "features"):
        if key not in raw:
            raise InputError(f"{where}: '{key}' is missing; see ml/contract.yaml for the shape.")
    target, task, metric, features = raw["target"], raw["task"], raw["primary_metric"], raw["features"]
    if not isinstance(target, str) or not target:
        raise InputError(f"{where}: 'target' must be a column name.")
    if task not in TASKS:
        raise InputError(f"{where}: task {task!r} is not one of {', '.join(TASKS)}.")
    if metric not in METRICS[task]:
        raise InputError(
            f"{where}: primary_metric {metric!r} is not written for {task}; use one of "
            f"{', '.join(METRICS[task])}."
        )
    if not isinstance(features, Mapping) or not features:
        raise InputError(f"{where}: 'features' must map at least one column name to a type.")
    for name, kind in features.items():
        if kind not in FEATURE_TYPES:
            raise InputError(
                f"{where}: feature {name!r} has type {kind!r}; use {', '.join(FEATURE_TYPES[:-1])} "
                f"or {FEATURE_TYPES[-1]}."
            )
    if target in features:
        raise InputError(f"{where}: the target {target!r} is also listed as a feature; remove it there.")
    return Contract(
        target=target,
        task=task,
        primary_metric=metric,
        features=MappingProxyType({str(k): str(v) for k, v in features.items()}),
        source=where,
    )


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


def run_step(
    main: Callable[..., object],
    parse_args: Callable[[Sequence[str] | None], argparse.Namespace],
    argv: Sequence[str] | None = None,
) -> int:
    """Run a step script: logs to stdout, an InputError as one line on stderr and exit code 2.

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
        return 2
    return 0
