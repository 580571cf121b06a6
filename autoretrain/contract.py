"""The data contract, and the streaming check ingest runs on the head of a customer file.

The contract is a YAML file (default `ml/contract.yaml`, `AUTORETRAIN_CONTRACT` to override):

    target: species
    task: classification        # classification | regression
    primary_metric: f1_macro
    features: {island: category, bill_length_mm: float, sex: category}
    max_bytes: 536870912        # optional: larger files are quarantined before any full read

Ingest reads only the first `HEAD_BYTES` of a file: enough to catch the wrong file, a missing
column or a mistyped value early. The pipeline's prep step validates every row.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from autoretrain.errors import ConfigError, ContractError

__all__ = ["FEATURE_TYPES", "HEAD_BYTES", "METRICS", "TASKS", "Contract", "check_head", "check_name", "load_contract"]

FEATURE_TYPES = ("float", "int", "category")
TASKS = ("classification", "regression")
# The metrics evaluate writes, per task, and whether greater is better. The pipeline's own copy is
# ml/src/contract.py (uploaded alone to Azure ML, so it cannot import this package); a test holds
# the two to the same rules.
METRICS: Mapping[str, Mapping[str, bool]] = MappingProxyType(
    {
        "classification": MappingProxyType(
            {"accuracy": True, "f1_macro": True, "precision_macro": True, "recall_macro": True}
        ),
        "regression": MappingProxyType({"r2": True, "rmse": False, "mae": False}),
    }
)
HEAD_BYTES = 256 * 1024
HEAD_ROWS = 1000
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
_MISSING = {"", "na", "nan", "null", "none"}


@dataclass(frozen=True, slots=True)
class Contract:
    target: str
    task: str
    primary_metric: str
    features: Mapping[str, str]
    max_bytes: int = DEFAULT_MAX_BYTES
    source: str = "contract.yaml"

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.features, self.target)


def load_contract(path: Path) -> Contract:
    """Read and validate a contract file; ConfigError names the file, the key and the fix."""
    import yaml  # here, not at the top: the loop imports this module and stays stdlib-only

    where = path.name
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the contract ({exc.strerror}).") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}).") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping with target, task, primary_metric and features.")
    for key in ("target", "task", "primary_metric", "features"):
        if key not in raw:
            raise ConfigError(f"{where}: '{key}' is missing; see ml/contract.yaml for the shape.")
    target, task, metric, features = raw["target"], raw["task"], raw["primary_metric"], raw["features"]
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{where}: 'target' must be a column name.")
    if task not in TASKS:
        raise ConfigError(f"{where}: task {task!r} is not one of {', '.join(TASKS)}.")
    if metric not in METRICS[task]:
        raise ConfigError(
            f"{where}: primary_metric {metric!r} is not written for {task}; use one of {', '.join(METRICS[task])}."
        )
    if not isinstance(features, Mapping) or not features:
        raise ConfigError(f"{where}: 'features' must map at least one column name to a type.")
    for name, kind in features.items():
        if kind not in FEATURE_TYPES:
            raise ConfigError(
                f"{where}: feature {name!r} has type {kind!r}; use {', '.join(FEATURE_TYPES[:-1])} "
                f"or {FEATURE_TYPES[-1]}."
            )
    if target in features:
        raise ConfigError(f"{where}: the target {target!r} is also listed as a feature; remove it there.")
    max_bytes = raw.get("max_bytes", DEFAULT_MAX_BYTES)
    if not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ConfigError(f"{where}: max_bytes {max_bytes!r} must be a positive whole number of bytes.")
    return Contract(
        target=target,
        task=task,
        primary_metric=metric,
        features=MappingProxyType({str(k): str(v) for k, v in features.items()}),
        max_bytes=max_bytes,
        source=where,
    )


def check_name(blob: str, content_length: int | None, contract: Contract) -> None:
    """Checks that need no read: the file type and size."""
    segments = blob.replace("\\", "/").split("/")
    if any(s in (".", "..") for s in segments) or not all(ch.isprintable() for ch in blob):
        raise ContractError(
            f"{blob!r}: the name has a '.' or '..' folder or a control character; upload it under a plain name."
        )
    if not blob.lower().endswith(".csv"):
        raise ContractError(f"{blob}: only .csv files are accepted; export the data as CSV and upload it again.")
    if content_length == 0:
        raise ContractError(f"{blob}: the file is empty; upload it again with its data.")
    if content_length is not None and content_length > contract.max_bytes:
        raise ContractError(
            f"{blob}: {content_length} bytes is over the contract's limit of {contract.max_bytes}; "
            "split the file or raise max_bytes in the contract."
        )


def _typed(value: str, kind: str) -> bool:
    if value.strip().lower() in _MISSING or kind == "category":
        return True
    try:
        number = float(value)
    except ValueError:
        return False
    if kind == "int":
        return math.isfinite(number) and number == int(number)
    return not math.isinf(number)


def check_head(blob: str, head: bytes, contract: Contract, *, complete: bool) -> int:
    """Check the header and the first rows of a CSV against the contract; return rows checked.

    `complete` says whether `head` is the whole file; if not, its last (maybe cut) line is skipped.
    """
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if complete or exc.start < len(head) - 4:
            raise ContractError(
                f"{blob}: byte {exc.start} is not UTF-8; save the file as UTF-8 CSV and upload it again."
            ) from None
        text = head[: exc.start].decode("utf-8-sig")
    if not complete:
        text = text[: text.rfind("\n") + 1]
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ContractError(f"{blob}: no header line; the first line must name the columns.") from None
    except csv.Error as exc:
        raise ContractError(f"{blob}: line 1 is not CSV ({exc}); fix the file and upload it again.") from None
    header = [h.strip() for h in header]
    missing = [c for c in contract.columns if c not in header]
    if missing:
        raise ContractError(
            f"{blob}: missing column(s) {', '.join(repr(m) for m in missing)} required by "
            f"{contract.source}; add them and upload the file again."
        )
    position = {name: header.index(name) for name in contract.columns}
    kinds = dict(contract.features)
    kinds[contract.target] = "category" if contract.task == "classification" else "float"
    rows = 0
    try:
        for line_no, row in enumerate(reader, start=2):
            if rows >= HEAD_ROWS:
                break
            if not row:
                continue
            if len(row) != len(header):
                raise ContractError(
                    f"{blob}: line {line_no} has {len(row)} fields, the header has {len(header)}; "
                    "fix the row and upload the file again."
                )
            for name, kind in kinds.items():
                value = row[position[name]]
                if not _typed(value, kind):
                    expected = "a whole number" if kind == "int" else "a number"
                    raise ContractError(
                        f"{blob}: column {name!r} has {value!r} on line {line_no}; expected {expected}. "
                        "Fix the file and upload it again."
                    )
            rows += 1
    except csv.Error as exc:
        raise ContractError(f"{blob}: not valid CSV near line {reader.line_num} ({exc}).") from None
    if rows == 0:
        raise ContractError(f"{blob}: the header has no data rows under it; upload a file with data.")
    return rows
