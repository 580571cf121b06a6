"""The data contract, and the streaming check ingest runs on the head of a customer file.

The contract is a YAML file (default `ml/contract.yaml`, `AUTORETRAIN_CONTRACT` to override); its
rules live in `autoretrain.datacontract`, the one module the pipeline steps share.

Ingest reads only the first `HEAD_BYTES` of a file: enough to catch the wrong file, a missing
column or a mistyped value early. The pipeline's prep step validates every row, with the same
rules and messages (`datacontract`'s CSV check).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from autoretrain.datacontract import (
    DEFAULT_MAX_BYTES,
    FEATURE_TYPES,
    METRICS,
    TASKS,
    Contract,
    ContractRuleError,
    bad_value_message,
    cell_problem,
    header_not_csv_message,
    header_problem,
    is_missing,
    no_data_rows_message,
    no_header_message,
    no_target_values_message,
    not_csv_message,
    not_utf8_message,
    ragged_row_message,
    read_contract,
    target_problem,
)
from autoretrain.domain.errors import ConfigError, ContractError

if TYPE_CHECKING:
    from _csv import Reader

__all__ = [
    "DEFAULT_MAX_BYTES", "FEATURE_TYPES", "HEAD_BYTES", "METRICS", "TASKS", "Contract", "check_head", "check_name",
    "load_contract",
]

HEAD_BYTES = 256 * 1024
HEAD_ROWS = 1000


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


def check_head(blob: str, head: bytes, contract: Contract, *, complete: bool) -> int:
    """Check the header and the first rows of a CSV against the contract; return rows checked.

    `complete` says whether `head` is the whole file; if not, its last (maybe cut) line is skipped.
    """
    reader = csv.reader(io.StringIO(_head_text(blob, head, complete=complete), newline=""))
    header = _header(blob, reader, contract)
    rows, targets, all_rows = _check_rows(blob, reader, header, contract)
    if rows == 0:
        raise ContractError(no_data_rows_message(blob))
    if complete and all_rows:
        # Every row of the file was read: what prep would refuse after registering it is refused here.
        # (Not when the check stopped at HEAD_ROWS: the rest may hold the other class, or the targets.)
        _check_whole_file(blob, targets, contract)
    return rows


def _head_text(blob: str, head: bytes, *, complete: bool) -> str:
    """The head as text, up to its last whole line when it is not the whole file."""
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if complete or exc.start < len(head) - 4:
            raise ContractError(not_utf8_message(blob, exc.start)) from None
        text = head[: exc.start].decode("utf-8-sig")  # a character cut at the end of the head
    return text if complete else text[: text.rfind("\n") + 1]


def _header(blob: str, reader: Reader, contract: Contract) -> list[str]:
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ContractError(no_header_message(blob)) from None
    except csv.Error as exc:
        raise ContractError(header_not_csv_message(blob, exc)) from None
    problem = header_problem(header, contract, blob)
    if problem:
        raise ContractError(problem)
    return header


def _check_rows(blob: str, reader: Reader, header: list[str], contract: Contract) -> tuple[int, list[str], bool]:
    """Check up to HEAD_ROWS rows; how many were checked, the target values they have, and whether
    they were all the rows the text holds (False when the check stopped at HEAD_ROWS)."""
    position = {name: header.index(name) for name in contract.columns}
    kinds = contract.kinds
    rows = 0
    targets: list[str] = []
    try:
        for row in reader:
            line_no = reader.line_num  # the line an editor shows (a quoted field may span lines)
            if rows >= HEAD_ROWS:
                return rows, targets, False
            if not row:
                continue
            _check_row(blob, row, line_no, len(header), position, kinds)
            target = row[position[contract.target]].strip()
            if not is_missing(target):
                targets.append(target)
            rows += 1
    except csv.Error as exc:
        raise ContractError(not_csv_message(blob, reader.line_num, exc)) from None
    return rows, targets, True


def _check_row(
    blob: str, row: list[str], line_no: int, width: int, position: Mapping[str, int], kinds: Mapping[str, str]
) -> None:
    if len(row) != width:
        raise ContractError(ragged_row_message(blob, line_no, len(row), width))
    for name, kind in kinds.items():
        value = row[position[name]]
        if cell_problem(kind, value):
            raise ContractError(bad_value_message(blob, name, value, line_no, kind))


def _check_whole_file(blob: str, targets: list[str], contract: Contract) -> None:
    if not targets:
        raise ContractError(no_target_values_message(blob, contract.target))
    problem = target_problem(blob, contract, targets)
    if problem:
        raise ContractError(problem)
