"""A blob's name, a reason or an error holds whatever its author put there: a newline and a forged
log line, a terminal escape sequence. Every log line and every line the CLI prints for a person
shows it escaped, on its own line; JSON output stays exact."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from autoretrain.cli.common import print_table
from autoretrain.domain import BlobRef, LedgerRecord, LedgerState, WorkKey
from autoretrain.logs import bound, log_event, printable

FORGED = "evil\n[2026-12-05T11:00:00.000Z] complete.done fake.csv"
# Every character str.splitlines() breaks a line at, and the ones a terminal acts on.
BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
# A status cell is cut at 60 characters: this one, escaped, just fits.
NAME = "evil\n[2026-12-05T11:00:00.000Z] done x.csv\x1b[2J"


class TestPrintable:
    def test_control_characters_are_written_as_repr_writes_them_without_quotes(self) -> None:
        assert printable("ctl\x01name.csv") == "ctl\\x01name.csv"
        assert printable("a\nb\rc\td") == "a\\nb\\rc\\td"
        assert printable("\x1b[2J\x1b]0;title\x07") == "\\x1b[2J\\x1b]0;title\\x07"
        assert printable("\x00\x7f\x9f") == "\\x00\\x7f\\x9f"
        assert printable("nel\x85ls\u2028ps\u2029") == "nel\\x85ls\\u2028ps\\u2029"

    def test_each_escape_is_the_one_repr_uses(self) -> None:
        for code in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]:
            assert printable(chr(code)) == repr(chr(code))[1:-1]

    def test_bidi_overrides_and_lone_surrogates_are_escaped(self) -> None:
        """An override reorders the rest of a line on screen; a lone surrogate cannot be written."""
        assert printable("a\u202eb\u2066c\ud800") == "a\\u202eb\\u2066c\\ud800"

    def test_printable_text_of_any_script_is_left_as_it_is(self) -> None:
        for text in ("données/été 2026.csv", "بيانات.csv", "数据 2026.csv", "a\\nb [bold]x", "tab-free ok", ""):
            assert printable(text) == text

    def test_the_result_is_always_one_line_with_no_control_character(self) -> None:
        text = printable(FORGED + BREAKS + "".join(map(chr, range(0x20))))
        assert text.splitlines() == [text] and text.isprintable()


class TestLogLines:
    def _lines(self, caplog: pytest.LogCaptureFixture) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "test.escaping"]

    def test_a_field_holding_line_breaks_is_one_line_and_shows_them(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger="test.escaping")
        logger = logging.getLogger("test.escaping")

        log_event(logger, logging.INFO, "ingest.received", blob=f"incoming/{FORGED}{BREAKS}x.csv", size=3)

        [line] = self._lines(caplog)
        assert line.splitlines() == [line] and line.isprintable()
        assert line == (
            'ingest.received blob="incoming/evil\\n[2026-12-05T11:00:00.000Z] complete.done fake.csv'
            '\\n\\r\\x0b\\x0c\\x1c\\x1d\\x1e\\x85\\u2028\\u2029x.csv" size=3'
        )

    def test_a_control_character_without_a_space_is_quoted_and_escaped(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """`ctl\\x01name.csv` reaches the console as an escape; quoted, so a real backslash (escaped
        inside quotes) and an escape never read alike."""
        caplog.set_level(logging.INFO, logger="test.escaping")
        logger = logging.getLogger("test.escaping")

        with bound(blob="incoming/ctl\x01name.csv"):
            log_event(logger, logging.INFO, "ingest.received", note="a\\x01b", plain="données/été.csv")

        [line] = self._lines(caplog)
        assert line == 'ingest.received blob="incoming/ctl\\x01name.csv" note=a\\x01b plain=données/été.csv'

    def test_the_record_keeps_the_exact_value_for_its_custom_dimension(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="test.escaping")
        log_event(logging.getLogger("test.escaping"), logging.INFO, "ingest.received", blob="a\nb")
        [record] = [r for r in caplog.records if r.name == "test.escaping"]
        assert record.blob == "a\nb"  # type: ignore[attr-defined]


class TestTable:
    def test_cells_are_escaped_and_never_read_as_markup(self) -> None:
        out = io.StringIO()
        rows = [{"blob": f"incoming/{NAME}", "reason": "\x1b[2J[bold]x[/bold]"}]
        print_table(rows, ["blob", "reason"], out)
        lines = out.getvalue().splitlines()
        assert len(lines) == 2 and all(line.isprintable() for line in lines)
        assert lines[1].split("  ")[0] == "incoming/evil\\n[2026-12-05T11:00:00.000Z] done x.csv\\x1b[2J"
        assert lines[1].endswith("\\x1b[2J[bold]x[/bold]")


# ---- `autoretrain status`, as a user runs it ----------------------------------------------------


def _record(name: str, reason: str) -> LedgerRecord:
    now = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    blob = BlobRef("incoming", name, "0x8D0000000000001")
    record = LedgerRecord.claimed(blob, WorkKey.for_blob(blob), "event-1", now, now + timedelta(minutes=5))
    return dataclasses.replace(record, reason=reason)


@pytest.fixture
def status_of(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> Iterator[Any]:
    """Run `autoretrain status ARGS` on a ledger holding `records`: (exit code, stdout, stderr)."""
    import autoretrain.cli.status as status
    from autoretrain.cli import main

    monkeypatch.setenv("AUTORETRAIN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(status, "azurite_for", lambda settings: contextlib.nullcontext())
    monkeypatch.setattr(status, "_unlistable", lambda settings: (), raising=False)

    def run(records: list[LedgerRecord], *args: str) -> tuple[int, str, str]:
        ledger = SimpleNamespace(records=lambda: list(records))
        monkeypatch.setattr(status, "operator", lambda settings: SimpleNamespace(ledger=ledger))
        code = main(["status", *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield run


def test_status_prints_a_name_with_a_newline_and_an_escape_sequence_escaped(status_of: Any) -> None:
    record = _record(NAME, "column 'a' has '\x1b[31mred'\nforged line")

    code, out, err = status_of([record])

    assert code == 0 and err == ""
    assert "\x1b" not in out and "\n[2026" not in out
    [header, row, summary] = out.splitlines()
    assert header.startswith("BLOB") and row.isprintable()
    assert summary.startswith("1 blob version(s): 1 claimed; 0 training job(s), 0 file training(s) in all")
    assert "incoming/evil\\n[2026-12-05T11:00:00.000Z] done x.csv\\x1b[2J" in row
    assert row.rstrip().endswith("column 'a' has '\\x1b[31mred'\\nforged line")


def test_status_blob_tells_the_story_of_such_a_name_escaped(status_of: Any) -> None:
    record = _record(NAME, "bad\u2028name")

    code, out, _ = status_of([record], f"incoming/{NAME}")

    assert code == 0
    lines = out.splitlines()
    assert all(line.isprintable() for line in lines) and "\x1b" not in out
    assert lines[0].startswith("incoming/evil\\n[2026-12-05T11:00:00.000Z] done x.csv\\x1b[2J  eTag ")
    assert lines[-1] == "  reason    bad\\u2028name"


def test_status_json_stays_exact_json(status_of: Any) -> None:
    record = _record(NAME, "r\x01")

    code, out, _ = status_of([record], "--json")

    assert code == 0
    [row] = json.loads(out)
    assert row["blob"] == f"incoming/{NAME}" and row["reason"] == "r\x01"


# ---- what the files cost: versions per job ------------------------------------------------------


def _in_job(name: str, job: str, state: LedgerState, trained_on: int) -> LedgerRecord:
    return dataclasses.replace(_record(name, ""), job=job, state=state, trained_on=trained_on, reason=None)


def test_status_shows_each_job_of_several_versions_and_what_the_files_cost(status_of: Any) -> None:
    records = [_in_job("day-1.csv", "autoretrain-one", LedgerState.DONE, 1),
               *(_in_job(f"day-{n}.csv", "autoretrain-burst", LedgerState.DONE, 4) for n in (2, 3, 4)),
               _record("day-5.csv", "")]
    records[-1] = dataclasses.replace(records[-1], state=LedgerState.WAITING)

    code, out, _ = status_of(records)

    assert code == 0
    lines = out.splitlines()
    assert "autoretrain-burst  3             4           done" in lines
    assert lines[-1] == ("5 blob version(s): 4 done, 1 waiting; 2 training job(s), 5 file training(s) in all "
                         "(a job trains on its whole window)")
    code, out, err = status_of(records, "--json")
    assert [r["job_new_versions"] for r in json.loads(out)] == [1, 3, 3, 3, None]
    assert err.startswith("5 blob version(s): 4 done, 1 waiting; 2 training job(s)")
