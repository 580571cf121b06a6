"""prep reads a remote training set (an MLTable of URIs, as on Azure ML) exactly as a local one.

On Azure ML the MLTable names datastore URIs; prep copies each file's bytes with the real `mltable`
package into a temporary folder and reads the copies with its local readers. Here the same branch
runs on local files named by `file://` URIs (anything with a scheme takes it), through the real
package: every case must give the same rows, or the same error (type, message, line and byte), as
the MLTable that names the same files by their paths.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlmodules import load_ml_module, wine

pytest.importorskip("mltable", reason="prep's remote branch copies files with the mltable package")

from autoretrain.datacontract import mltable_text

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "ml" / "src"
WINE_CONTRACT = ROOT / "ml" / "contract.yaml"

prep = load_ml_module(SRC / "prep.py", "ml_step_prep_remote")
# The remote copies are made by the steps' shared plumbing (ml/src/contract.py), which prep calls.
steps = load_ml_module(SRC / "contract.py", "ml_step_contract_remote")
CONTRACT = prep.load_contract(WINE_CONTRACT)

_FRAME = wine().wine_frame()
_HEADER, *_LINES = _FRAME.to_csv(index=False).splitlines()


def _csv(rows: list[str], header: str = _HEADER) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


def _rows(count: int) -> list[str]:
    return [_LINES[i % len(_LINES)] for i in range(count)]


def _set_field(line: str, index: int, value: str) -> str:
    fields = line.split(",")
    fields[index] = value
    return ",".join(fields)


def _quoted_newlines() -> bytes:
    """A `note` column (which the contract ignores) whose every 7th value spans three lines."""
    frame = _FRAME.copy()
    frame["note"] = [f"cask {i};\nsecond tasting:\n  fine" if i % 7 == 0 else f"cask {i}" for i in range(len(frame))]
    return str(frame.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC)).encode()


def _bad_after_quoted_newlines() -> bytes:
    """A note spanning lines 2-4, then 'oops' for alcohol on line 5 (as an editor numbers lines)."""
    rows = [f'{_LINES[0]},"one\ntwo\nthree"', _set_field(_LINES[1], 0, "oops") + ",plain"]
    return _csv([*rows, *(f"{line},plain" for line in _LINES[2:])], header=f"{_HEADER},note")


def _blank_lines() -> bytes:
    rows = _rows(178)
    return _csv([*rows[:40], "", "", *rows[40:90], "   ", *rows[90:]])


def _bad_after_blank_lines() -> bytes:
    """Three blank lines, then 'n/a?' for ash on line 105 of the file."""
    rows = _rows(178)
    rows[100] = _set_field(rows[100], 2, "n/a?")
    return _csv([*rows[:40], "", "", *rows[40:90], "", *rows[90:]])


def _latin1_deep() -> bytes:
    """A valid 6,000-row file whose line 5000 spells its cultivar in latin-1 ('cl\\xe9ss_...')."""
    lines = _csv(_rows(6_000)).split(b"\n")
    lines[4_999] = lines[4_999].replace(b"class_", b"cl\xe9ss_")
    return b"\n".join(lines)


def _ragged() -> bytes:
    rows = _rows(178)
    rows[60] += ",7.5"
    return _csv(rows)


# id: (the file's bytes, the start of the error the newest file gives; None: the file is valid)
CASES: dict[str, tuple[Callable[[], bytes], str | None]] = {
    "clean": (lambda: _csv(_rows(178)), None),
    "quoted-newlines": (_quoted_newlines, None),
    "bad-after-quoted-newlines": (_bad_after_quoted_newlines, "case.csv: column 'alcohol' has 'oops' on line 5;"),
    "blank-lines": (_blank_lines, None),
    "bad-after-blank-lines": (_bad_after_blank_lines, "case.csv: column 'ash' has 'n/a?' on line 105;"),
    "utf8-bom": (lambda: b"\xef\xbb\xbf" + _csv(_rows(178)), None),
    "crlf": (lambda: _csv(_rows(178)).replace(b"\n", b"\r\n"), None),
    "latin1-line-5000": (_latin1_deep, "case.csv: line 5000, byte "),
    "ragged": (_ragged, "case.csv: line 62 has 15 fields, the header has 14;"),
}


def _training_sets(tmp_path: Path, data: bytes, newest: bool) -> tuple[Path, Path, list[Path]]:
    """Two MLTable folders naming the same two files (a clean one and the case's, which is the
    newest when `newest`): one by paths (prep's local branch), one by file:// URIs (its remote one)."""
    files = tmp_path / "files"
    files.mkdir()
    (files / "2026-01.csv").write_bytes(_csv(_rows(178)[::-1]))
    (files / "case.csv").write_bytes(data)
    members = [files / "2026-01.csv", files / "case.csv"]
    if not newest:
        members.reverse()
    local, remote = tmp_path / "local", tmp_path / "remote"
    for folder, names in ((local, [str(m) for m in members]), (remote, [m.as_uri() for m in members])):
        folder.mkdir()
        (folder / "MLTable").write_text(mltable_text(names), encoding="utf-8")
    return local, remote, members


def _outcome(read: Callable[[], Any]) -> tuple[str, Any]:
    """What a reader gives: its result, or its error's type, message, line and byte."""
    try:
        return "rows", read()
    except prep.InputError as exc:
        return "error", (type(exc).__name__, str(exc), getattr(exc, "line", None), getattr(exc, "byte", None))


def _assert_same(local: tuple[str, Any], remote: tuple[str, Any]) -> None:
    assert local[0] == remote[0], (local, remote)
    if local[0] == "error":
        assert remote[1] == local[1]
        return
    if local[1] is None or remote[1] is None:  # read_fast declined
        assert local[1] is remote[1] is None
        return
    assert len(local[1]) == len(remote[1])
    for mine, theirs in zip(local[1], remote[1], strict=True):
        if isinstance(mine, pd.DataFrame):
            pd.testing.assert_frame_equal(theirs, mine)
        else:
            assert theirs == mine


@pytest.mark.parametrize("newest", [True, False], ids=["newest-file", "older-file"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_remote_branch_reads_every_case_as_the_local_one(tmp_path: Path, case: str, newest: bool) -> None:
    """The exact reader (rows, lines, file names, label, positions, or the error) and the fast
    reader (typed rows, or None) give the same for the MLTable of URIs as for the one of paths; a
    fault in the newest file is a DataError, in an older one an InputError, either way."""
    make, error = CASES[case]
    local, remote, members = _training_sets(tmp_path, make(), newest)
    assert prep.mltable_files(remote) == [m.as_uri() for m in members]  # the remote branch is taken

    exact = _outcome(lambda: prep.read_training_set(local, CONTRACT))
    _assert_same(exact, _outcome(lambda: prep.read_training_set(remote, CONTRACT)))
    _assert_same(_outcome(lambda: prep.read_fast(local, CONTRACT)), _outcome(lambda: prep.read_fast(remote, CONTRACT)))

    if error is None or error.startswith("case.csv: column"):  # a bad value is found once the rows are typed
        assert exact[0] == "rows"
        _, _, names, label, positions = exact[1]
        assert set(names) == {"2026-01.csv", "case.csv"} and sorted(set(positions)) == [0, 1]
        assert label == "training set of 2 file(s)"
    else:
        kind, message, line, byte = exact[1]
        assert kind == ("DataError" if newest else "InputError")
        assert message.startswith(error)
        if case == "latin1-line-5000":
            offset = make().index(b"\xe9")
            assert f"line 5000, byte {offset} is not UTF-8" in message
            if newest:
                assert (line, byte) == (5000, offset)


@pytest.mark.parametrize("newest", [True, False], ids=["newest-file", "older-file"])
@pytest.mark.parametrize(
    "case", ["clean", "quoted-newlines", "bad-after-quoted-newlines", "bad-after-blank-lines", "latin1-line-5000"]
)
def test_prep_gives_the_same_splits_or_the_same_error_for_uris_and_paths(
    tmp_path: Path, case: str, newest: bool
) -> None:
    """End to end: prep.main on the two MLTables writes the same report and splits, or raises the
    same error (type, message), whatever reader (fast or exact) it takes."""
    make, _ = CASES[case]
    local, remote, _ = _training_sets(tmp_path, make(), newest)

    def run(data: Path) -> tuple[str, Any]:
        out = tmp_path / f"out-{data.name}"
        return _outcome(lambda: (
            prep.main(data=data, contract=WINE_CONTRACT, train_data=out / "train", test_data=out / "test",
                      report=out / "report"),
            pd.read_parquet(out / "train" / "data.parquet"),
            pd.read_parquet(out / "test" / "data.parquet"),
        ))

    _assert_same(run(local), run(remote))


def test_copies_are_byte_for_byte_under_their_own_base_names(tmp_path: Path) -> None:
    """Two files of one name in different folders are both copied, each under its own name, in order."""
    sources = []
    for folder, data in (("a", b"\xef\xbb\xbfx,y\r\n1,\"two\nlines\"\n\n3,\xe9\n"), ("b", b"x,y\n5,6\n")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "drop.csv").write_bytes(data)
        sources.append(tmp_path / folder / "drop.csv")
    copies = steps._fetch_remote([s.as_uri() for s in sources], tmp_path / "copies")
    assert [c.name for c in copies] == ["drop.csv", "drop.csv"] and copies[0] != copies[1]
    assert [c.read_bytes() for c in copies] == [s.read_bytes() for s in sources]
    assert sorted(p.name for p in (tmp_path / "copies").iterdir()) == ["0", "1"]  # no download left-overs


def test_a_file_that_cannot_be_copied_is_an_input_error_naming_its_uri(tmp_path: Path) -> None:
    """Not the data's fault (nothing is known of its content): an InputError, as a missing local file is."""
    uri = (tmp_path / "gone.csv").as_uri()
    with pytest.raises(steps.InputError) as caught:
        steps._fetch_remote([uri], tmp_path / "copies")
    assert not isinstance(caught.value, steps.DataError)
    assert str(caught.value).startswith(f"{uri}: cannot copy the data file (")
    assert "\n" not in str(caught.value)


def test_a_short_datastore_uri_is_completed_from_the_job_s_workspace(monkeypatch: pytest.MonkeyPatch) -> None:
    """mltable reads `azureml://datastores/...` as a local path; in a job, the workspace Azure ML
    names in the environment makes it the long form, which it reads as the datastore's."""
    short = "azureml://datastores/workspaceblobstore/paths/k/2026/march.csv"
    for name in steps._WORKSPACE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(steps.InputError, match="AZUREML_ARM_SUBSCRIPTION"):
        steps._long_form(short)
    monkeypatch.setenv("AZUREML_ARM_SUBSCRIPTION", "sub")
    monkeypatch.setenv("AZUREML_ARM_RESOURCEGROUP", "rg")
    monkeypatch.setenv("AZUREML_ARM_WORKSPACE_NAME", "ws")
    assert steps._long_form(short) == (
        "azureml://subscriptions/sub/resourcegroups/rg/workspaces/ws/datastores/workspaceblobstore/paths/k/2026/march.csv"
    )
    for other in ("file:///tmp/a.csv", "https://acct.blob.core.windows.net/c/a.csv",
                  "azureml://subscriptions/s/resourcegroups/r/workspaces/w/datastores/d/paths/a.csv"):
        assert steps._long_form(other) == other


def test_a_local_training_set_never_imports_mltable(tmp_path: Path) -> None:
    """The package is for the remote branch only: prep imports it there, not at import time."""
    local, _, _ = _training_sets(tmp_path, _csv(_rows(178)), newest=True)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from mlmodules import load_ml_module\n"
        f"prep = load_ml_module(Path({str(SRC / 'prep.py')!r}), 'p')\n"
        "assert 'mltable' not in sys.modules\n"
        f"spec = prep.load_contract(Path({str(WINE_CONTRACT)!r}))\n"
        f"assert prep.read_fast(Path({str(local)!r}), spec) is not None\n"
        f"prep.read_training_set(Path({str(local)!r}), spec)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mltable', 'azureml')))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
