"""What the CLI prints where a program reads it (a pipe, a file): plain text, one line per row."""

from __future__ import annotations

import io

import pytest

from autoretrain.cli.common import print_table


class TestTableOffATerminal:
    def test_rows_are_plain_unwrapped_lines_whatever_the_environment_asks(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """FORCE_COLOR and a narrow COLUMNS change nothing: no escape code, no wrapped cell, no padding
        at a line's end; values two spaces apart under upper-case headers, "-" for none."""
        monkeypatch.setenv("FORCE_COLOR", "1")
        monkeypatch.setenv("COLUMNS", "20")
        out = io.StringIO()
        rows = [
            {"blob": "incoming/2026-01.csv", "metrics": {"f1_macro": 0.91234, "rows": 36}, "reason": None},
            {"blob": "incoming/[bold]typo.csv", "metrics": None, "reason": "column 'alcohol' has 'twelve'"},
        ]
        print_table(rows, ["blob", "metrics", "reason"], out)
        assert out.getvalue().splitlines() == [
            "BLOB                     METRICS                 REASON",
            "incoming/2026-01.csv     f1_macro=0.912 rows=36  -",
            "incoming/[bold]typo.csv  -                       column 'alcohol' has 'twelve'",
        ]

    def test_a_long_cell_is_cut_to_the_width_with_an_ellipsis(self) -> None:
        out = io.StringIO()
        print_table([{"reason": "x" * 100}], ["reason"], out, width=10)
        assert out.getvalue() == "REASON\n" + "x" * 9 + "…\n"
