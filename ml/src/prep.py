"""Prep step: validate the training set's files against the contract, clean them, split train/test.

The training set is the job's window of data versions (an MLTable naming their files, fixed when
the job was submitted), or one CSV file.

Every row is checked here (ingest only checked the head of the file), so a bad value anywhere
fails the step with one line naming the column, the line and the value. When the fault is in one of
the newest files (the `new_files` data versions this job is for: one, or a burst that waited for a
job) it is a `DataError` (exit code 65): the loop then quarantines that file. In an older file of the
window, which passed prep before, it is our fault (the contract changed), an `InputError`, and the
job fails. Missing feature values
are kept and counted: the model pipeline imputes them from the training split only, so test rows
and rows scored after deployment are treated alike. Rows without a target cannot teach anything
and are dropped and counted. Each row's split is a function of its own content and `seed`.
"""

from __future__ import annotations

import argparse
import codecs
import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from contract import (
    DATA_FILE,
    MISSING,
    MODES,
    Contract,
    DataError,
    InputError,
    load_contract,
    local_files,
    log_to_mlflow,
    run_step,
    split_schema,
)
from datacontract import (
    REPORT_FILE,
    ContractRuleError,
    bad_value_message,
    header_problem,
    mltable_files,
    no_header_message,
    not_csv_message,
    not_utf8_message,
    ragged_row_message,
    target_problem,
)

if TYPE_CHECKING:
    from _csv import Reader

__all__ = ["build_parser", "first_non_utf8", "hash_test_mask", "main", "parse_args", "read_rows"]

_log = logging.getLogger("prep")


def build_parser() -> argparse.ArgumentParser:
    """The flags are the component's input and output names (components/prep.yml)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="the training set (a folder with an MLTable file) or one CSV file")
    parser.add_argument("--contract", type=Path, required=True, help="the contract YAML file")
    parser.add_argument("--test_fraction", type=float, default=0.25, help="share of rows held out")
    parser.add_argument("--seed", type=int, default=42, help="key of the row hash that splits train/test")
    parser.add_argument("--train_last", type=int, default=0,
                        help="train on the last N files of the training set (0: all); test on all of them")
    parser.add_argument("--new_files", type=int, default=1,
                        help="how many of the training set's last files are this job's new data (not yet checked)")
    parser.add_argument("--mode", choices=MODES, default="train",
                        help="train: split train/test by row hash; score: every row is a test row "
                        "(the champion is scored)")
    parser.add_argument("--train_data", type=Path, required=True, help=f"folder for {DATA_FILE}")
    parser.add_argument("--test_data", type=Path, required=True, help=f"folder for {DATA_FILE}")
    parser.add_argument("--report", type=Path, required=True, help="folder for report.json")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (or `argv`)."""
    return build_parser().parse_args(argv)


def first_non_utf8(path: Path, chunk: int = 1 << 20) -> tuple[int, int] | None:
    """(byte offset, line) of the first byte of `path` that is not UTF-8, counted in the file
    itself (a text reader's error counts from the start of its own buffer); None if all of it is."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with path.open("rb") as handle:
        while True:
            data = handle.read(chunk)
            pending = len(decoder.getstate()[0])  # the bytes of a character split across reads
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                start = offset - pending + exc.start
                return start, line + data[: max(start - offset, 0)].count(b"\n")
            if not data:
                return None
            offset += len(data)
            line += data.count(b"\n")


def read_rows(path: Path, contract: Contract) -> tuple[pd.DataFrame, list[int]]:
    """The declared columns as stripped strings, and each row's line number in the file.

    Read with the csv module rather than pandas so that line numbers in errors are the ones
    an editor shows, blank lines included. Whatever is wrong with the file is a DataError.
    """
    header, rows, lines = _read_csv(path)
    problem = header_problem(header, contract, path.name, cite_line=True)
    if problem:
        raise DataError(problem, line=1)
    ignored = [c for c in header if c not in contract.columns]
    if ignored:
        _log.info("columns_ignored %s", ",".join(ignored))
    frame = pd.DataFrame(rows, columns=header, dtype=object)
    frame = frame[list(contract.columns)].apply(lambda column: column.str.strip())
    return frame.reset_index(drop=True), lines


def _read_csv(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """The stripped header, the rows that are not blank and the line each ends on."""
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise InputError(f"{path}: cannot read the data file ({exc.strerror}).") from None
    with handle:
        reader = csv.reader(handle)
        try:
            return _records(reader, path.name)
        except StopIteration:
            raise DataError(no_header_message(path.name), line=1) from None
        except csv.Error as exc:
            raise DataError(not_csv_message(path.name, reader.line_num, exc), line=reader.line_num) from None
        except UnicodeDecodeError as exc:
            raise _not_utf8(path, exc) from None


def _records(reader: Reader, name: str) -> tuple[list[str], list[list[str]], list[int]]:
    header = [h.strip() for h in next(reader)]
    rows: list[list[str]] = []
    lines: list[int] = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        line = reader.line_num
        if len(row) != len(header):
            raise DataError(ragged_row_message(name, line, len(row), len(header)), line=line)
        rows.append(row)
        lines.append(line)
    return header, rows, lines


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> DataError:
    """The line and byte in the whole file (a text reader's offset counts from its own buffer)."""
    where = first_non_utf8(path)
    if where is None:
        return DataError(not_utf8_message(path.name, exc.start), byte=exc.start)
    byte, line = where
    return DataError(not_utf8_message(path.name, byte, line), line=line, byte=byte)


# The spellings of "no value" pandas is told about (MISSING, compared lower-cased, has these).
_NA_TOKENS = sorted({v for m in MISSING for v in (m, m.upper(), m.capitalize())} | {"NaN", "nAn"})


def _rectangular(path: Path) -> bool:
    """Every non-blank line has the header's number of fields, and no field is quoted. pandas' C
    parser pads a short row with gaps and, given `usecols`, drops a long row's extra fields without
    a word: so the fast path reads only files this proves plain. About 0.2 s for 1M lines."""
    # Line by line: one big read buffer would raise malloc's mmap threshold, and the DataFrame read
    # next would then leave the heap fragmented (+30 MB peak on 1M rows).
    with path.open("rb") as handle:
        header = handle.readline()
        if b'"' in header:
            return False
        fields = header.count(b",")
        for line in handle:
            if b'"' in line or (line.count(b",") != fields and line.strip()):
                return False
    return True


def read_fast(data: Path, contract: Contract) -> tuple[pd.DataFrame, list[int]] | None:
    """The fast path: pandas' C parser straight into the contract's types, file by file; the typed
    frame and each row's file number. None when anything is unusual (a value that is not a number,
    a ragged row, a quoted field, another encoding, a padded header): the exact reader then
    runs and names the file, the line and the value. Valid files give the same rows either way.
    A remote training set is read from its local copies (`local_files`), as the exact reader reads it."""
    try:
        files = _training_files(data)
    except ContractRuleError:
        return None
    numeric = {c for c, kind in contract.kinds.items() if kind != "category"}
    frames, positions = [], []
    for position, file in enumerate(files):
        frame = _read_fast_file(file, contract, numeric)
        if frame is None:
            return None
        frames.append(frame)
        positions += [position] * len(frame)
    return pd.concat(frames, ignore_index=True), positions


def _training_files(data: Path) -> list[Path]:
    """One CSV file, or the local files (or copies) of those a training set's MLTable names."""
    return local_files(mltable_files(data)) if data.is_dir() else [data]


def _read_fast_file(file: Path, contract: Contract, numeric: set[str]) -> pd.DataFrame | None:
    """One file's typed rows, or None when the exact reader must read it."""
    try:
        if not _rectangular(file) or not _plain_header(file, contract):
            return None
        frame = pd.read_csv(
            file, usecols=list(contract.columns), encoding="utf-8-sig", engine="c",
            dtype={c: ("float64" if c in numeric else object) for c in contract.columns},
            na_values=_NA_TOKENS, keep_default_na=False, skip_blank_lines=True,
        )
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError, OSError, csv.Error):
        return None
    if not _numbers_fit(frame, contract, numeric):
        return None
    for column in set(contract.columns) - numeric:
        text = frame[column].astype(object)
        stripped = text.where(text.isna(), text.astype(str).str.strip())
        frame[column] = stripped.where(~stripped.astype(str).str.lower().isin(MISSING), None)
    for column in contract.columns_of("int"):
        frame[column] = frame[column].astype("Int64")  # as the exact reader types them
    frame = frame[list(contract.columns)]
    return frame[~frame.isna().all(axis=1)]  # the exact reader skips rows with no value at all


def _plain_header(file: Path, contract: Contract) -> bool:
    """The header passes the shared rule as it is, unstripped. Read with the csv module: pandas
    would rename a doubled column ('x.1') and so hide it."""
    with file.open(encoding="utf-8-sig", newline="") as handle:
        header = next(csv.reader(handle), [])
    padded = any(h != h.strip() for h in header if h in contract.columns)
    return not padded and header_problem(header, contract, file.name) is None


def _numbers_fit(frame: pd.DataFrame, contract: Contract, numeric: set[str]) -> bool:
    """Every numeric value is finite, and whole in an int column (a gap is NaN)."""
    kinds = contract.kinds
    for column in numeric:
        values = frame[column].to_numpy()
        present = values[~np.isnan(values)]
        if not np.isfinite(present).all():
            return False
        if kinds[column] == "int" and (present != np.floor(present)).any():
            return False
    return True


def read_training_set(
    data: Path, contract: Contract, new_files: int = 1
) -> tuple[pd.DataFrame, list[int], list[str], str, list[int]]:
    """The rows of every file in the training set, in order; each row's line, file name and file
    number; a name for messages. `data` is a training set (a folder with an MLTable file naming the
    files, as the workspace registers it) or one CSV file; its last `new_files` are new."""
    try:
        files = _training_files(data)
    except ContractRuleError as exc:
        raise InputError(str(exc)) from None
    frames, lines, names, positions = [], [], [], []
    for position, file in enumerate(files):
        try:
            frame, file_lines = read_rows(file, contract)
        except DataError as exc:
            raise _fault(str(exc), position, len(files), new_files, line=exc.line, byte=exc.byte) from None
        frames.append(frame)
        lines += file_lines
        names += [file.name] * len(file_lines)
        positions += [position] * len(file_lines)
    _log.info("training_set files=%d rows=%d", len(files), len(lines))
    label = f"training set of {len(files)} file(s)" if len(files) > 1 else files[0].name
    return pd.concat(frames, ignore_index=True), lines, names, label, positions


def _fault(
    message: str, position: int, count: int, new: int, *, line: int | None = None, byte: int | None = None
) -> InputError:
    """A fault in file `position` of a training set of `count` files, the last `new` of them new: a
    new file's is the data's own (DataError); an older file passed prep when it was new, so its fault
    is ours."""
    if position >= count - max(new, 1):
        return DataError(message, line=line, byte=byte)
    return InputError(
        f"{message} (That file is data version {position + 1} of {count} in the training set and passed "
        "prep before: the contract has changed since; fix the contract, or narrow the training window.)"
    )


def _typed_column(
    values: pd.Series, kind: str, column: str, lines: Sequence[int], files: Sequence[str],
    positions: Sequence[int], count: int, new: int = 1,
) -> pd.Series:
    """Convert one column to its declared type; the first bad value fails with its line. The rule is
    `datacontract.cell_problem`'s, on the whole column at once (the values are stripped): the same
    numbers pass both (ASCII digits, sign, point, exponent; not '1_000', other scripts' digits or '-nan')."""
    missing = values.str.lower().isin(MISSING)
    if kind == "category":
        return values.where(~missing, None).astype(object)
    numbers = pd.to_numeric(values.where(~missing), errors="coerce").astype(float)
    bad = ~missing & ~np.isfinite(numbers)
    if kind == "int":
        bad |= ~missing & np.isfinite(numbers) & (numbers != np.floor(numbers))
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        message = bad_value_message(files[first], column, values.iloc[first], lines[first], kind, int(bad.sum()) - 1)
        raise _fault(message, positions[first], count, new, line=lines[first])
    return numbers.astype("Int64") if kind == "int" else numbers


def _hash_view(frame: pd.DataFrame, contract: Contract) -> pd.DataFrame:
    """A row's content as the split hashes it: numbers as float64 values (so '1.50' and '1.5' are
    one row, whichever reader read it), text as text, a gap as an empty string."""
    view = pd.DataFrame(index=frame.index)
    for column in contract.columns:
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values):
            view[column] = values.astype("float64")
        else:
            view[column] = values.astype(object).where(values.notna(), "").astype(str)
    return view


def hash_test_mask(rows: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Which rows go to the test split: decided by a hash of each row's own text and `seed`, never by
    its position or a shuffle. So a row is in the same split in every retrain, whatever file or
    window it comes in, and the champion is never scored on rows it was trained on. At least one
    row is tested and two are trained on (the ones whose hashes sit at the ends), still by content.
    """
    key = f"{seed % 10**16:016d}"  # hash_pandas_object takes a 16-character key
    hashes = pd.util.hash_pandas_object(rows, index=False, hash_key=key).to_numpy()
    mask = (hashes / float(2**64)) < fraction
    order = np.argsort(hashes, kind="stable")
    if not mask.any():
        mask[order[0]] = True
    while (~mask).sum() < 2 and mask.sum() > 1:
        mask[order[-1 - int((~mask).sum())]] = False
    return np.asarray(mask)


def _write_rows(frame: pd.DataFrame, mask: np.ndarray, path: Path, schema: pa.Schema, chunk: int = 1 << 17) -> None:
    """The rows of `frame` that `mask` selects, as Parquet typed by `schema` (a gap, NaN or None, a
    null), a slice at a time, a row group each: a split converted whole would copy most of the frame
    first (+75% of its memory at the step's peak). Arrow allocates from the system allocator: its
    default pool (mimalloc) keeps the slices' freed pages, +14 MB at the peak on 1M rows."""
    pool = pa.system_memory_pool()
    with pq.ParquetWriter(path, schema, memory_pool=pool) as out:
        for start in range(0, len(frame), chunk):
            part = frame.iloc[start : start + chunk][mask[start : start + chunk]]
            if len(part):
                columns = [pa.array(part[f.name], type=f.type, from_pandas=True, memory_pool=pool) for f in schema]
                out.write_table(pa.Table.from_arrays(columns, schema=schema))


def main(
    data: Path,
    contract: Path,
    train_data: Path,
    test_data: Path,
    report: Path,
    test_fraction: float = 0.25,
    seed: int = 42,
    train_last: int = 0,
    new_files: int = 1,
    mode: str = "train",
) -> dict[str, object]:
    """Validate, clean and split `data`; write the two splits and report.json; return the report.
    In mode `score` every row is a test row: the job scores the champion on the new data alone.

    When a new file breaks the contract, report.json holds `rejected` (reason, line, byte) before
    the DataError propagates (exit code 65): the loop quarantines the file on what is written there.
    """
    try:
        return _prepare(data, contract, train_data, test_data, report, test_fraction, seed, train_last, new_files,
                        mode)
    except DataError as exc:
        _write_report(report, {"rejected": exc.as_report()})
        raise


def _write_report(folder: Path, summary: dict[str, object]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / REPORT_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def _prepare(
    data: Path,
    contract: Path,
    train_data: Path,
    test_data: Path,
    report: Path,
    test_fraction: float = 0.25,
    seed: int = 42,
    train_last: int = 0,
    new_files: int = 1,
    mode: str = "train",
) -> dict[str, object]:
    """Validate, clean and split `data`; write the two splits and report.json; return the report.

    The training set lists every accepted data version; the model trains on the last `train_last`
    of them (the contract's window; 0: all), and is tested, with the champion, on the test rows of
    all of them: a model that forgot a class is judged on that class too.
    """
    _check_arguments(test_fraction, train_last, mode)
    spec = load_contract(contract)
    frame, positions, label, path = _read(data, spec, new_files)
    _log.info("read path=%s rows=%d", path, len(frame))
    rows_in = len(frame)

    has_target = frame[spec.target].notna()
    dropped = int((~has_target).sum())
    if dropped:  # (a copy of the whole frame: only when there is something to drop)
        frame = frame[has_target].reset_index(drop=True)
        _log.info("rows_dropped_missing_target %d", dropped)
    # Fewer rows or one class in a single file is that file's fault; in a window of files that
    # each passed before, it cannot happen from the data alone.
    problem = target_problem(label, spec, frame[spec.target])
    if problem:
        raise (DataError if max(positions, default=0) < max(new_files, 1) else InputError)(problem)
    imputed = {column: int(frame[column].isna().sum()) for column in spec.features}
    for column, count in imputed.items():
        if count:
            _log.info("values_missing column=%s count=%d", column, count)

    position = np.asarray(positions)[has_target.to_numpy()]
    if mode == "score":  # the champion is scored on every row; nothing is trained
        test_mask = np.ones(len(frame), dtype=bool)
        train_mask = ~test_mask
    else:
        train_mask, test_mask = _split(frame, spec, position, label, test_fraction, seed, train_last)
    schema = split_schema(spec)
    for folder, mask in ((train_data, train_mask), (test_data, test_mask)):
        folder.mkdir(parents=True, exist_ok=True)
        _write_rows(frame, mask, folder / DATA_FILE, schema)
    files = int(position.max()) + 1 if len(position) else 0
    summary: dict[str, object] = {
        "rows_in": rows_in,
        "rows_out": len(frame),
        "rows_dropped_missing_target": dropped,
        "values_imputed": imputed,
        "train_rows": int(train_mask.sum()),
        "files": files,
        "train_files": train_last or files,
        "test_rows": int(test_mask.sum()),
        "split": "row content hash" if mode == "train" else "none: every row scores the champion",
    }
    _write_report(report, summary)
    _log.info("split train_rows=%d test_rows=%d", summary["train_rows"], summary["test_rows"])
    # Where tracking is set (Azure ML, the local workspace): the report's counts as metrics.
    log_to_mlflow(
        {"test_fraction": test_fraction, "seed": seed, "train_last": train_last, "read_path": path},
        {**{name: float(value) for name, value in summary.items() if isinstance(value, int)},
         "values_imputed": float(sum(imputed.values()))},
    )
    return summary


def _check_arguments(test_fraction: float, train_last: int, mode: str = "train") -> None:
    if mode not in MODES:
        raise InputError(f"mode {mode!r} must be one of {', '.join(MODES)}.")
    if not 0 < test_fraction < 1:
        raise InputError(f"test_fraction {test_fraction} must be between 0 and 1 (exclusive), e.g. 0.25.")
    if train_last < 0:
        raise InputError(f"train_last {train_last} must be 0 (every file) or more.")


def _read(data: Path, spec: Contract, new_files: int = 1) -> tuple[pd.DataFrame, list[int], str, str]:
    """The typed rows, each row's file number, a name for messages and the path that read them."""
    fast = read_fast(data, spec)
    if fast is not None:
        return fast[0], fast[1], data.name, "fast"
    raw, lines, files, label, positions = read_training_set(data, spec, new_files)
    count = max(positions, default=0) + 1
    frame = pd.DataFrame(index=raw.index)
    for column, kind in spec.kinds.items():
        frame[column] = _typed_column(raw[column], kind, column, lines, files, positions, count, new_files)
    return frame, positions, label, "exact"


def _split(
    frame: pd.DataFrame, spec: Contract, position: np.ndarray, label: str, test_fraction: float, seed: int,
    train_last: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The train and test masks: test rows by content hash, train rows from the window's files only."""
    test_mask = hash_test_mask(_hash_view(frame, spec), test_fraction, seed)
    in_window = position >= (position.max() + 1 - train_last) if train_last else np.ones(len(frame), dtype=bool)
    train_mask = ~test_mask & in_window
    if train_mask.sum() < 2:
        raise InputError(
            f"{label}: the window's last {train_last} file(s) leave {int(train_mask.sum())} training row(s); "
            "widen the contract's training window or upload more rows."
        )
    return train_mask, test_mask


if __name__ == "__main__":
    raise SystemExit(run_step(main, parse_args))
