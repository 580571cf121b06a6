"""The data contract, and the streaming check ingest runs on the head of a customer file.

The contract is a YAML file (default `ml/contract.yaml`, `AUTORETRAIN_CONTRACT` to override); its
rules live in `autoretrain.datacontract`, the one module the pipeline steps share.

Ingest reads only the first `HEAD_BYTES` of a file: enough to catch the wrong file, a missing
column or a mistyped value early. The pipeline's prep step validates every row.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from autoretrain.datacontract import (
    DEFAULT_MAX_BYTES,
    FEATURE_TYPES,
    METRICS,
    MIN_ROWS,
    MISSING,
    TASKS,
    Contract,
    ContractRuleError,
    read_contract,
)
from autoretrain.domain.errors import ConfigError, ContractError

__all__ = [
    "DEFAULT_MAX_BYTES", "FEATURE_TYPES", "HEAD_BYTES", "METRICS", "TASKS", "Contract", "check_head", "check_name",
    "load_contract",
]

HEAD_BYTES = 256 * 1024
HEAD_ROWS = 1000
_MISSING = MISSING


def load_contract(path: Path) -> Contract:
    """Read and check a contract file (the rules are `datacontract`'s, shared with the pipeline);
    ConfigError names the file, the key and the fix."""
    try:
        return read_contract(path)
    except ContractRuleError as exc:
        raise ConfigError(str(exc)) from None


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
    doubled = sorted({c for c in contract.columns if header.count(c) > 1})
    if doubled:
        raise ContractError(
            f"{blob}: column(s) {', '.join(map(repr, doubled))} appear twice in line 1; keep one and "
            "upload the file again."
        )
    position = {name: header.index(name) for name in contract.columns}
    kinds = dict(contract.features)
    kinds[contract.target] = "category" if contract.task == "classification" else "float"
    rows = 0
    targets: list[str] = []
    try:
        for row in reader:
            line_no = reader.line_num  # the line an editor shows (a quoted field may span lines)
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
            target = row[position[contract.target]].strip()
            if target.lower() not in _MISSING:
                targets.append(target)
            rows += 1
    except csv.Error as exc:
        raise ContractError(f"{blob}: not valid CSV near line {reader.line_num} ({exc}).") from None
    if rows == 0:
        raise ContractError(f"{blob}: the header has no data rows under it; upload a file with data.")
    if complete and rows <= HEAD_ROWS:
        # The whole file was read: what prep would refuse after registering it is refused here.
        _check_whole_file(blob, targets, contract)
    return rows


def _check_whole_file(blob: str, targets: list[str], contract: Contract) -> None:
    if not targets:
        raise ContractError(
            f"{blob}: the target column {contract.target!r} has no values; fill it in and upload the file again."
        )
    if len(targets) < MIN_ROWS:
        raise ContractError(
            f"{blob}: {len(targets)} row(s) have a {contract.target!r} value; at least {MIN_ROWS} are needed to "
            "train and test. Upload a file with more rows."
        )
    if contract.task == "classification" and len(set(targets)) < 2:
        raise ContractError(
            f"{blob}: {contract.target!r} has the single value {targets[0]!r}; a classifier needs at least two "
            "classes. Upload a file with more than one class."
        )
